// The planner (issue #24): for a model, a kind of device and an allocation, which layouts fit
// and how fast each would train. Memory comes from the formulas the model and the parallel
// layers expose for what they allocate (activation_plan, pipeline_buffers, plan_buckets,
// unit_ranges: the tests hold each to the allocators' counts); time from each product's FLOPs
// at the speed of its width, attention's FLOPs (unit_costs), the bytes the memory-bound ops and
// each collective move, over a device profile's speeds, which
// `nuri calibrate` measures on the machine at hand and shipped profiles give for common GPUs.
//
// MFU, defined once (docs: README "Planning an allocation"): model FLOPs per token × tokens/s
// ÷ (devices × the profile's peak FLOP/s). Model FLOPs per token are unit_costs' sum: 6 per
// weight of every product (forward 2, backward 4; the LM head included, the embedding lookup
// not), plus attention's 6·2·T·H·D per block per token halved for the causal mask. HFU adds
// what recomputation runs again: a full-recompute block's forward (a third of its cost).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "nuri/model/config.h"
#include "nuri/model/transformer.h"

namespace nuri {

/// One kind of device and how fast it goes, per device. Figures from a datasheet or measured
/// (`nuri calibrate`); `source` says which.
struct DeviceProfile {
  std::string name;          ///< "h100-sxm-80gb", "cpu", ...
  bool gpu = true;           ///< bf16 compute, the CUDA allocator's size classes; else f32
  int64_t memory_bytes = 0;  ///< per device
  double peak_flops = 0;     ///< dense FLOP/s in the compute dtype: MFU's denominator
  double matmul_flops = 0;   ///< FLOP/s large products reach
  /// Products whose smallest dimension is K reach matmul_flops · K / (K + matmul_half_width)
  /// (0: all reach matmul_flops): narrow models' products are slower per FLOP, on a CPU
  /// markedly.
  double matmul_half_width = 0;
  /// Measured instead (calibrate: 1024 × K times K × 4K): (K, FLOP/s) by increasing K,
  /// interpolated in log K (and held at the ends); when given it replaces the two above.
  std::vector<std::pair<double, double>> matmul_by_width;
  /// FLOP/s a product whose smallest dimension is k reaches.
  double matmul_rate(double k) const;
  double attention_flops = 0;  ///< FLOP/s the attention kernels reach (causal FLOPs)
  /// Measured instead (calibrate): (head dim, FLOP/s) at sequence length 512, interpolated as
  /// matmul_by_width.
  std::vector<std::pair<double, double>> attention_by_head_dim;
  /// Measured too: (sequence length, speed relative to length 512) at head dim 64, the same
  /// number of tokens each; short sequences are slower per FLOP (the diagonal's tiles are
  /// partly masked, and each row's fixed work is a larger share).
  std::vector<std::pair<double, double>> attention_by_seq_len;
  /// FLOP/s attention of head dim d reaches on sequences of length t.
  double attention_rate(double d, double t = 512) const;
  double memory_bandwidth = 0;  ///< bytes/s elementwise work reaches
  /// Measured instead (calibrate), by kind of memory-bound work ("layernorm", "rmsnorm",
  /// "gelu", "swiglu", "rope", "cross_entropy", "adamw"): the bytes/s it reaches, counting the
  /// bytes estimate_step_time charges it. On a CPU these kinds differ several-fold (GELU's tanh
  /// and SwiGLU's exp are compute-bound there); a kind not listed runs at memory_bandwidth.
  std::map<std::string, double> op_bandwidth;
  /// Bytes/s of one kind of elementwise work.
  double bandwidth(const std::string& kind) const;
  double intra_node_bandwidth = 0;  ///< bus bytes/s of a collective inside a node, per device
  double inter_node_bandwidth = 0;  ///< the same across nodes
  double collective_latency = 0;    ///< seconds a collective costs beyond its bytes
  int devices_per_node = 8;
  std::string source;
};

/// The shipped profiles' names (h100-sxm-80gb, a100-sxm-80gb, rtx-4090, rtx-3090, cpu).
std::vector<std::string> device_profile_names();
/// A shipped profile by name, or a profile file (JSON, what calibrate writes) by path. Throws
/// nuri::Error listing the names when it is neither.
DeviceProfile device_profile(const std::string& name_or_path);
std::string device_profile_to_json(const DeviceProfile& p);
DeviceProfile device_profile_from_json(const std::string& json, const std::string& origin);

class Backend;
class Communicator;

/// Measures the machine it runs on: products at widths 64 to 2048, attention's forward and
/// backward by head dim and sequence length, each kind of elementwise work (op_bandwidth) on
/// `backend`, and with a communicator of several ranks its all-reduce's bus bandwidth and
/// latency (every rank calls it). Returns `base` with the
/// measured figures replaced (a GPU keeps its datasheet peak for MFU; the CPU's peak becomes
/// its measured product speed) and the source saying what was measured where. Takes a few
/// seconds (seconds_per_probe each).
DeviceProfile calibrate_device(Backend& backend, Communicator* comm, const DeviceProfile& base,
                               double seconds_per_probe = 0.5);

/// A way to run: the grid, the ZeRO stage, recomputation, sequence parallelism and the batch
/// (micro_batch sequences per micro-batch, grad_accum micro-batches per step on each dp rank).
struct Layout {
  int dp = 1, tp = 1, pp = 1;
  int zero = 0;
  Recompute recompute = Recompute::none;
  int64_t recompute_every = 1;
  bool sp = false;
  int64_t micro_batch = 1, grad_accum = 1;
  int64_t bucket_bytes = int64_t(8) << 20;  ///< ParallelConfig's
  bool keep_gathered = false;  ///< ParallelConfig's (ZeRO 3 only)
  /// ParallelConfig's: reductions during the backward (GPU ranks with tp or pp never do).
  bool overlap = true;
  int world() const { return dp * tp * pp; }
  /// "dp 2 × tp 2 × pp 2, ZeRO 1, recompute selective, sp, micro-batch 4 × 8"
  std::string str() const;
};

/// Per-device bytes by what they are for (the allocator's categories; communication: ZeRO's
/// gradient buckets and gathered weights, the pipeline's staging buffers; workspace: the
/// device kernels' scratch).
struct MemoryPlan {
  int64_t parameters = 0, gradients = 0, optimizer = 0, activations = 0, communication = 0,
          workspace = 0;
  /// The most held while the model and its optimizer are built (before the first step): the
  /// whole gradient buffer and masters exist until data parallelism shards them.
  int64_t construction = 0;
  int64_t step() const {
    return parameters + gradients + optimizer + activations + communication + workspace;
  }
  int64_t peak() const { return step() > construction ? step() : construction; }
  std::string str() const;
};

/// The bytes one rank holds: pipeline stage `stage` (of layout.pp), dp rank 0 (the largest
/// shard), at sequence length seq_len.
MemoryPlan estimate_memory(const ModelConfig& cfg, const Layout& layout, int64_t seq_len,
                           const DeviceProfile& device, int stage = 0);
/// The most bytes the CUDA backend's workspace is asked for, on any GPU, by the requests that
/// grow with the model (kernels/norm.cu, kernels/optimizer.cu; estimate_memory's workspace
/// holds the largest request): the norms' backward on `rows` rows, and the optimizer step (the
/// global gradient norm and AdamW) over the parameters one rank holds at place `tp`, `stage`.
int64_t norm_backward_workspace_bound(const ModelConfig& cfg, int64_t rows);
int64_t optimizer_workspace_bound(const ModelConfig& cfg, TensorParallelRank tp = {},
                                  PipelineStage stage = {});

/// The largest over the pipeline's stages.
MemoryPlan estimate_peak_memory(const ModelConfig& cfg, const Layout& layout, int64_t seq_len,
                                const DeviceProfile& device, int* worst_stage = nullptr);

/// Model FLOPs of one trained token (MFU's numerator per token; see the top of this file) and
/// the hardware FLOPs with recomputation's extra forward work.
double model_flops_per_token(const ModelConfig& cfg, int64_t seq_len);
double hardware_flops_per_token(const ModelConfig& cfg, int64_t seq_len, Recompute recompute,
                                int64_t every = 1);

/// A step's predicted time, in parts (seconds).
struct StepTime {
  double compute = 0;      ///< products and attention on the slowest stage, all micro-batches
  double elementwise = 0;  ///< memory-bound work (norms, activations, the optimizer)
  double tp_comm = 0;      ///< tensor-parallel collectives (not overlapped)
  double pp_comm = 0;      ///< pipeline sends and receives
  double bubble = 0;       ///< pipeline idle time
  double dp_comm = 0;      ///< data-parallel collectives left after overlap with the backward
  double total() const { return compute + elementwise + tp_comm + pp_comm + bubble + dp_comm; }
};
StepTime estimate_step_time(const ModelConfig& cfg, const Layout& layout, int64_t seq_len,
                            const DeviceProfile& device, int nodes = 1);

/// What to plan: a model, a device kind, the allocation and the batch.
struct PlanRequest {
  ModelConfig model;
  DeviceProfile device;
  int nodes = 1;
  int devices_per_node = 0;  ///< 0: the profile's
  int64_t seq_len = 1024;
  int64_t global_batch = 0;  ///< sequences per step (0: 8 per device)
  /// Memory kept free of the device's (fragmentation, the runtime's own): the fraction usable.
  double usable_fraction = 0.9;
  /// The run's data-parallel settings every layout keeps (ParallelConfig's): bucket size, ZeRO
  /// 3 keeping each block's gathered weights from its forward to its backward, and overlap.
  int64_t bucket_bytes = int64_t(8) << 20;
  bool keep_gathered = false;
  bool overlap = true;
};

struct PlanEntry {
  Layout layout;
  MemoryPlan memory;  ///< the largest stage's
  int worst_stage = 0;
  StepTime time;
  double tokens_per_second = 0, mfu = 0, hfu = 0;
  bool fits = false;
  std::string why;  ///< what does not fit, when it does not
};

/// Every layout of the allocation (tp within a node, pp dividing the blocks, dp the rest, the
/// global batch split into micro-batches, ZeRO 0–3, recomputation none/selective/full, sequence
/// parallelism with tp), predicted; those that fit first, fastest first.
std::vector<PlanEntry> plan_layouts(const PlanRequest& request);

/// A table of the first `rows` entries and the reasons the rest do not fit.
std::string plan_report(const PlanRequest& request, const std::vector<PlanEntry>& entries,
                        int rows = 10);

}  // namespace nuri
