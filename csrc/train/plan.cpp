// The planner (nuri/train/plan.h): memory from the layers' own allocation formulas, time from
// FLOPs and bytes over a device profile, and the search over an allocation's layouts.
#include "nuri/train/plan.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/json_checked.h"
#include "nuri/backend/backend.h"
#include "nuri/core/allocator.h"
#include "nuri/core/error.h"
#include "nuri/core/log.h"
#include "nuri/dist/communicator.h"
#include "nuri/model/memory.h"
#include "nuri/parallel/data_parallel.h"
#include "nuri/parallel/pipeline.h"

namespace nuri {

namespace {

constexpr double kGiB = double(int64_t(1) << 30);

// The shipped profiles. Peak FLOP/s, memory and bandwidths are the vendors' published figures
// (dense bf16 with f32 accumulation); what products and attention reach of the peak is an
// assumption until `nuri calibrate` measures it on the device (70 % and 50 %), as is the share
// of the memory bandwidth elementwise kernels reach (70 %) and the per-collective latency.
DeviceProfile gpu_profile(const char* name, double mem_mib, double peak_tflops, double hbm_gbs,
                          double intra_gbs, double inter_gbs, int per_node, const char* source) {
  DeviceProfile p;
  p.name = name;
  p.gpu = true;
  p.memory_bytes = int64_t(mem_mib * 1048576.0);
  p.peak_flops = peak_tflops * 1e12;
  p.matmul_flops = 0.7 * p.peak_flops;
  p.attention_flops = 0.5 * p.peak_flops;
  p.memory_bandwidth = 0.7 * hbm_gbs * 1e9;
  p.intra_node_bandwidth = intra_gbs * 1e9;
  p.inter_node_bandwidth = inter_gbs * 1e9;
  p.collective_latency = 20e-6;
  p.devices_per_node = per_node;
  p.source = std::string(source) +
             "; matmul 70 % and attention 50 % of peak, elementwise 70 % of the memory bandwidth "
             "and 20 us a collective are assumptions (nuri calibrate measures them)";
  return p;
}

std::vector<DeviceProfile> shipped_profiles() {
  std::vector<DeviceProfile> out;
  // NVLink figures are per direction (half the bidirectional total); InfiniBand one NIC per GPU.
  out.push_back(gpu_profile("h100-sxm-80gb", 81559, 989.4, 3350, 450, 50, 8,
                            "NVIDIA H100 Tensor Core GPU datasheet (SXM5: bf16 989.4 TFLOPS "
                            "dense, 80 GB HBM3 at 3.35 TB/s, NVLink 900 GB/s); 400 Gb/s NDR "
                            "InfiniBand per GPU"));
  out.push_back(gpu_profile("a100-sxm-80gb", 81920, 312, 2039, 300, 25, 8,
                            "NVIDIA A100 Tensor Core GPU datasheet (SXM4 80 GB: bf16 312 TFLOPS "
                            "dense, HBM2e at 2,039 GB/s, NVLink 600 GB/s); 200 Gb/s HDR "
                            "InfiniBand per GPU"));
  out.push_back(gpu_profile("rtx-4090", 24564, 165.2, 1008, 25, 12.5, 4,
                            "NVIDIA Ada Lovelace architecture whitepaper (RTX 4090: bf16 tensor "
                            "165.2 TFLOPS dense with f32 accumulate, 24 GB GDDR6X at 1,008 GB/s); "
                            "PCIe 4.0 x16 between GPUs (no NVLink or peer access), 100 Gb/s "
                            "Ethernet between nodes"));
  out.push_back(gpu_profile("rtx-3090", 24576, 71, 936, 25, 12.5, 4,
                            "NVIDIA Ampere GA102 whitepaper (RTX 3090: bf16 tensor 71 TFLOPS "
                            "dense with f32 accumulate, 24 GB GDDR6X at 936 GB/s); PCIe 4.0 x16 "
                            "between GPUs, 100 Gb/s Ethernet between nodes"));
  DeviceProfile cpu;
  cpu.name = "cpu";
  cpu.gpu = false;
  cpu.memory_bytes = int64_t(16) << 30;
  cpu.peak_flops = cpu.matmul_flops = 50e9;
  cpu.attention_flops = 10e9;
  cpu.memory_bandwidth = 5e9;
  cpu.intra_node_bandwidth = cpu.inter_node_bandwidth = 2e9;
  cpu.collective_latency = 50e-6;
  cpu.devices_per_node = 1;
  cpu.source = "placeholder figures for a small CPU; run nuri calibrate for this machine's";
  out.push_back(cpu);
  return out;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The bytes the allocator of `device` holds for a request.
int64_t held(const DeviceProfile& d, int64_t bytes) {
  return bytes <= 0 ? 0 : d.gpu ? device_block_bytes(bytes) : bytes;
}

PipelineStage stage_of(const ModelConfig& cfg, const Layout& l, int64_t seq_len, int stage) {
  if (l.pp == 1) return {};
  const std::vector<int64_t> first = pipeline_stages(cfg, l.pp, seq_len);
  return {first[size_t(stage)], first[size_t(stage) + 1]};
}

}  // namespace

namespace {

// A (width, rate) table by increasing width, interpolated in log width and held at its ends.
double by_width(const std::vector<std::pair<double, double>>& t, double w) {
  if (w <= t.front().first) return t.front().second;
  if (w >= t.back().first) return t.back().second;
  size_t i = 1;
  while (t[i].first < w) ++i;
  const double a = std::log(t[i - 1].first), b = std::log(t[i].first), x = std::log(w);
  return t[i - 1].second + (t[i].second - t[i - 1].second) * (x - a) / (b - a);
}

std::vector<std::pair<double, double>> width_table(const nlohmann::json& j, const char* key,
                                                   const std::string& origin) {
  std::vector<std::pair<double, double>> t;
  if (!j.contains(key)) return t;
  try {
    t = j[key].get<std::vector<std::pair<double, double>>>();
  } catch (const nlohmann::json::exception&) {
    NURI_CHECK(false, origin, ": \"", key, "\" must be a list of [width, rate] pairs");
  }
  for (size_t i = 0; i < t.size(); ++i) {
    NURI_CHECK(t[i].first > 0 && t[i].second > 0 && (i == 0 || t[i].first > t[i - 1].first), origin,
               ": \"", key, "\" needs positive widths, increasing, and positive rates");
  }
  return t;
}

}  // namespace

std::vector<std::string> device_profile_names() {
  std::vector<std::string> out;
  for (const DeviceProfile& p : shipped_profiles()) out.push_back(p.name);
  return out;
}

std::string device_profile_to_json(const DeviceProfile& p) {
  nlohmann::ordered_json j;
  j["name"] = p.name;
  j["gpu"] = p.gpu;
  j["memory_bytes"] = p.memory_bytes;
  j["peak_flops"] = p.peak_flops;
  j["matmul_flops"] = p.matmul_flops;
  j["matmul_half_width"] = p.matmul_half_width;
  if (!p.matmul_by_width.empty()) j["matmul_by_width"] = p.matmul_by_width;
  if (!p.attention_by_head_dim.empty()) j["attention_by_head_dim"] = p.attention_by_head_dim;
  if (!p.attention_by_seq_len.empty()) j["attention_by_seq_len"] = p.attention_by_seq_len;

  j["attention_flops"] = p.attention_flops;
  j["memory_bandwidth"] = p.memory_bandwidth;
  if (!p.op_bandwidth.empty()) j["op_bandwidth"] = p.op_bandwidth;
  j["intra_node_bandwidth"] = p.intra_node_bandwidth;
  j["inter_node_bandwidth"] = p.inter_node_bandwidth;
  j["collective_latency"] = p.collective_latency;
  j["devices_per_node"] = p.devices_per_node;
  j["source"] = p.source;
  return j.dump(2);
}

DeviceProfile device_profile_from_json(const std::string& text, const std::string& origin) {
  nlohmann::json j;
  try {
    j = json_checked::parse(text);
  } catch (const nlohmann::json::exception& e) {
    NURI_CHECK(false, origin, ": not a device profile (JSON): ", e.what());
  }
  NURI_CHECK(j.is_object(), origin, ": a device profile is a JSON object");
  DeviceProfile p;
  auto number = [&](const char* key, double& out, bool positive) {
    NURI_CHECK(j.contains(key) && j[key].is_number(), origin, ": device profile needs \"", key,
               "\", a number (nuri calibrate writes every field)");
    out = j[key].get<double>();
    NURI_CHECK(!positive || out > 0, origin, ": \"", key, "\" must be positive, got ", out);
  };
  double mem = 0, per_node = 0;
  number("memory_bytes", mem, true);
  number("peak_flops", p.peak_flops, true);
  number("matmul_flops", p.matmul_flops, true);
  number("attention_flops", p.attention_flops, true);
  number("memory_bandwidth", p.memory_bandwidth, true);
  number("intra_node_bandwidth", p.intra_node_bandwidth, true);
  number("inter_node_bandwidth", p.inter_node_bandwidth, true);
  number("collective_latency", p.collective_latency, false);
  number("devices_per_node", per_node, true);
  NURI_CHECK(mem < 9e18, origin, ": \"memory_bytes\" is ", mem, ", more than nuri counts "
             "(9e18 bytes)");
  p.memory_bytes = int64_t(mem);
  NURI_CHECK(per_node == std::floor(per_node) && per_node <= 1 << 20, origin,
             ": \"devices_per_node\" must be a whole number of devices, got ", per_node);
  p.devices_per_node = int(per_node);
  p.matmul_half_width = 0;
  number("matmul_half_width", p.matmul_half_width, false);
  NURI_CHECK(p.matmul_half_width >= 0, origin, ": \"matmul_half_width\" must be 0 or more (the "
             "inner width at which products reach half their speed), got ", p.matmul_half_width);
  p.matmul_by_width = width_table(j, "matmul_by_width", origin);
  p.attention_by_head_dim = width_table(j, "attention_by_head_dim", origin);
  p.attention_by_seq_len = width_table(j, "attention_by_seq_len", origin);
  if (j.contains("op_bandwidth")) {
    const nlohmann::json& ops = j["op_bandwidth"];
    NURI_CHECK(ops.is_object(), origin, ": \"op_bandwidth\" must be an object of kind: bytes/s");
    for (const auto& [kind, rate] : ops.items()) {
      NURI_CHECK(rate.is_number() && rate.get<double>() > 0, origin, ": \"op_bandwidth\" \"", kind,
                 "\" must be a positive number (bytes/s)");
      p.op_bandwidth[kind] = rate.get<double>();
    }
  }
  NURI_CHECK(!j.contains("name") || j["name"].is_string(), origin, ": \"name\" must be a string");
  NURI_CHECK(!j.contains("gpu") || j["gpu"].is_boolean(), origin,
             ": \"gpu\" must be true or false");
  p.name = j.value("name", origin);
  p.gpu = j.value("gpu", true);
  p.source = j.contains("source") && j["source"].is_string() ? j["source"].get<std::string>() : "";
  return p;
}

DeviceProfile device_profile(const std::string& name_or_path) {
  for (const DeviceProfile& p : shipped_profiles()) {
    if (p.name == name_or_path) return p;
  }
  std::ifstream in(name_or_path);
  if (!in) {
    std::string names;
    for (const auto& n : device_profile_names()) names += (names.empty() ? "" : ", ") + n;
    NURI_CHECK(false, "unknown device '", name_or_path, "': give a profile name (", names,
               ") or the path of a profile file (nuri calibrate --out FILE writes one)");
  }
  std::stringstream ss;
  ss << in.rdbuf();
  return device_profile_from_json(ss.str(), name_or_path);
}

double DeviceProfile::matmul_rate(double k) const {
  if (matmul_by_width.empty()) return matmul_flops * k / (k + matmul_half_width);
  return by_width(matmul_by_width, k);
}

double DeviceProfile::attention_rate(double d, double t) const {
  const double at_512 =
      attention_by_head_dim.empty() ? attention_flops : by_width(attention_by_head_dim, d);
  return attention_by_seq_len.empty() ? at_512 : at_512 * by_width(attention_by_seq_len, t);
}

double DeviceProfile::bandwidth(const std::string& kind) const {
  const auto it = op_bandwidth.find(kind);
  return it == op_bandwidth.end() ? memory_bandwidth : it->second;
}

std::string Layout::str() const {
  std::string s = strprintf("dp %d x tp %d x pp %d, ZeRO %d, recompute %s", dp, tp, pp, zero,
                            recompute_name(recompute));
  if (recompute != Recompute::none && recompute_every > 1) {
    s += strprintf(" every %lld", (long long)recompute_every);
  }
  if (sp) s += ", sp";
  if (keep_gathered && zero == 3) s += ", keep gathered";
  if (!overlap && dp > 1) s += ", no overlap";
  return s + strprintf(", micro-batch %lld x %lld", (long long)micro_batch, (long long)grad_accum);
}

std::string MemoryPlan::str() const {
  auto g = [](int64_t b) { return double(b) / kGiB; };
  return strprintf(
      "%.2f GiB: parameters %.2f, gradients %.2f, optimizer %.2f, activations %.2f, "
      "communication %.2f, workspace %.2f (construction %.2f)",
      g(peak()), g(parameters), g(gradients), g(optimizer), g(activations), g(communication),
      g(workspace), g(construction));
}

namespace {
/// A layout given from outside (Python's dicts): every count in its range, named when not.
void check_layout(const ModelConfig& cfg, const Layout& l, int64_t seq_len, const char* who) {
  auto at_least_1 = [&](const char* key, int64_t v) {
    NURI_CHECK(v >= 1, who, ": layout ", key, " is ", v, "; it must be at least 1");
  };
  at_least_1("dp", l.dp);
  at_least_1("tp", l.tp);
  at_least_1("pp", l.pp);
  at_least_1("micro_batch", l.micro_batch);
  at_least_1("grad_accum", l.grad_accum);
  // And at most what a run could take: the pipeline's schedule is simulated micro-batch by
  // micro-batch, and the products of these counts must not overflow.
  auto at_most = [&](const char* key, int64_t v, int64_t most) {
    NURI_CHECK(v <= most, who, ": layout ", key, " is ", v, "; it must be at most ", most);
  };
  at_most("dp", l.dp, 1 << 24);
  at_most("tp", l.tp, 1 << 15);
  at_most("pp", l.pp, 1 << 15);
  at_most("micro_batch", l.micro_batch, 1 << 20);
  at_most("grad_accum", l.grad_accum, 1 << 24);
  at_most("dp x tp x pp", int64_t(l.dp) * l.tp * l.pp, 1 << 24);
  if (l.pp > 1) at_most("pp x grad_accum", int64_t(l.pp) * l.grad_accum, 1 << 22);
  at_least_1("recompute_every", l.recompute_every);
  at_least_1("bucket_bytes", l.bucket_bytes);
  NURI_CHECK(l.zero >= 0 && l.zero <= 3, who, ": layout zero is ", l.zero,
             "; ZeRO stages are 0, 1, 2 and 3");
  NURI_CHECK(seq_len >= 1 && seq_len <= cfg.max_seq_len, who, ": seq_len is ", seq_len,
             "; it must be in [1, max_seq_len = ", cfg.max_seq_len, "]");
  check_sliding_window(cfg, seq_len);
  // What the run refuses (ParallelConfig, the model's rows split over tp).
  NURI_CHECK(!l.sp || l.tp > 1, who, ": sequence parallelism (sp) needs tp > 1");
  NURI_CHECK(!l.sp || (l.micro_batch * seq_len) % l.tp == 0, who, ": with sp a micro-batch's ",
             l.micro_batch * seq_len, " tokens (micro_batch x seq_len) must split evenly over "
             "tp = ", l.tp);
}
}  // namespace

namespace {
/// pipeline_buffers of a 1F1B stage, from one simulation of the schedule a (pp, m) and kept: a
/// plan asks for every stage of each layout's ZeRO, recomputation and sp variants.
PipelineBuffers stage_buffers(int pp, int m, int stage) {
  thread_local std::map<std::pair<int, int>, std::vector<PipelineBuffers>> known;
  if (known.size() > 256) known.clear();
  auto it = known.find({pp, m});
  if (it == known.end()) {
    it = known.emplace(std::pair(pp, m), pipeline_buffers_by_rank(pp, m)).first;
  }
  return it->second[size_t(stage)];
}
}  // namespace

int64_t norm_backward_workspace_bound(const ModelConfig& cfg, int64_t rows) {
  // plan_norm_backward: f32 partial sums of the weight's gradient (and a layernorm bias's), a
  // row of C (2C) per block; at most ceil(rows / 4) blocks, and at most 2048 with a warp a row
  // (C <= 1024) or 256 with a block a row, whatever SM count it spreads the rows over; twice
  // that when a block's accumulators do not fit its 96 KiB of shared memory.
  const int64_t c = cfg.d_model;
  const int64_t acc = 4 * c * (cfg.norm == NormKind::layernorm && cfg.bias ? 2 : 1);
  const bool warp_rows = c <= 1024;
  const int64_t blocks = std::min<int64_t>(ceil_div(rows, 4), warp_rows ? 2048 : 256);
  const bool in_shared = warp_rows || acc + 128 <= 96 * 1024;
  return blocks * acc * (in_shared ? 1 : 2);
}

int64_t optimizer_workspace_bound(const ModelConfig& cfg, TensorParallelRank tp,
                                  PipelineStage stage) {
  // A descriptor a tensor (AdamW's 64 bytes, the norm's 24) and a table of tensors + 1 int64
  // offsets, each part 16-byte aligned; the norm adds an f64 partial per 4096 elements of each
  // tensor. The step passes at most one tensor a parameter (ZeRO: slices of them, or its shard).
  const std::vector<ParamSpec> layout = param_layout(cfg, tp, stage);
  const int64_t n = int64_t(layout.size());
  int64_t elements = 0;
  for (const ParamSpec& p : layout) elements += p.numel();
  const int64_t table = 8 * (n + 1) + 32;
  return std::max(64 * n + table, 24 * n + table + 8 * (elements / 4096 + n + 1));
}

MemoryPlan estimate_memory(const ModelConfig& cfg, const Layout& l, int64_t seq_len,
                           const DeviceProfile& dev, int stage_index) {
  check_layout(cfg, l, seq_len, "estimate_memory");
  NURI_CHECK(stage_index >= 0 && stage_index < l.pp, "estimate_memory: stage ", stage_index, " of ",
             l.pp);
  const TensorParallelRank place{0, l.tp};
  const PipelineStage stage = stage_of(cfg, l, seq_len, stage_index);
  const std::vector<std::pair<int64_t, int64_t>> units = unit_ranges(cfg, place, stage);
  const int64_t psi = units.back().second;  // this rank's flat layout
  const int n = l.dp;
  // ZeRO's shards (rank 0's, the largest: DataParallel::shard_of gives the remainder first).
  const int64_t shard = ceil_div(psi, n);
  const bool z3 = l.zero == 3 && n > 1, master_shard = l.zero >= 1 && n > 1;
  const bool grad_shard = l.zero >= 2;  // stage 2 owns a shard-sized buffer even on one rank
  const int64_t e = dev.gpu ? 2 : 4;    // the compute dtype
  MemoryPlan m;
  // Weights: the compute copy (f32 on the CPU, where it is the masters), f32 masters on a GPU
  // (optimizer state, sharded with it), f32 gradients, AdamW's two f32 moments.
  const int64_t held_weights = z3 ? shard : psi;
  m.parameters = held(dev, e * held_weights);
  const int64_t masters = dev.gpu ? held(dev, 4 * (master_shard ? shard : psi)) : 0;
  m.gradients = held(dev, 4 * (grad_shard ? shard : psi));
  m.optimizer = masters + 2 * held(dev, 4 * (l.zero >= 1 ? shard : psi));
  // Construction: the model's whole master weights and gradient buffer exist (unless ZeRO 3
  // builds its shard alone) until data parallelism shards them; a shard is allocated before the
  // whole buffer it replaces is freed.
  if (z3) {
    m.construction = m.parameters + m.gradients + m.optimizer;
  } else {
    int64_t now = held(dev, e * psi) + (dev.gpu ? held(dev, 4 * psi) : 0) + held(dev, 4 * psi);
    int64_t most = now;
    if (dev.gpu && master_shard) {  // shard_master_weights
      most = std::max(most, now + masters);
      now += masters - held(dev, 4 * psi);
    }
    if (grad_shard) {  // the gradient shard, then the model's buffer goes
      most = std::max(most, now + m.gradients);
      now += m.gradients - held(dev, 4 * psi);
    }
    m.construction = std::max(most, now + 2 * held(dev, 4 * (l.zero >= 1 ? shard : psi)));
  }
  // Activations: the model's plan for the micro-batches a stage holds at once, and the
  // pipeline's staging for what arrives from the neighbours.
  ActivationShape a;
  a.b = l.micro_batch;
  a.t = seq_len;
  a.act = dev.gpu ? DType::bf16 : DType::f32;
  a.place = place;
  a.sp = l.sp && l.tp > 1;
  a.recompute = l.recompute;
  a.every = l.recompute_every;
  a.stage = stage;
  a.device = dev.gpu;
  auto block = [&](int64_t b) { return held(dev, b); };
  PipelineBuffers pb;
  if (l.pp > 1) pb = stage_buffers(int(l.pp), int(l.grad_accum), stage_index);
  a.slots = pb.slots;
  m.activations = activation_bytes(cfg, a, block);
  const int64_t rows = a.sp ? l.micro_batch * seq_len / l.tp : l.micro_batch * seq_len;
  const int64_t stream = held(dev, e * rows * cfg.d_model);
  m.communication = (2 * pb.act_staging + pb.grad_staging) * stream;
  // ZeRO 2, 3: the gradient buckets in flight (two, and the tied embedding's through the whole
  // backward); ZeRO 3: two units' weights gathered (the computing one and the next's prefetch,
  // or the tied head and the embedding).
  if (l.zero >= 2) {
    std::vector<std::pair<int64_t, int64_t>> backward(units.rbegin(), units.rend());
    const auto buckets = DataParallel::plan_buckets(backward, l.bucket_bytes);
    int64_t largest = 0;
    for (size_t i = 0; i + 1 < buckets.size(); ++i) {
      largest = std::max(largest, held(dev, 4 * (buckets[i].second - buckets[i].first)));
    }
    const int64_t last = held(dev, 4 * (buckets.back().second - buckets.back().first));
    // A tied embedding's bucket on the stage with the head (the whole model's, or the last
    // stage's copy) lives through the whole backward: the head writes into it first.
    const bool embedding_held =
        cfg.tied_embeddings && (stage.last < 0 || stage.last == cfg.n_layer);
    int64_t staging = embedding_held ? 2 * largest + last : std::max(2 * largest, largest + last);
    if (buckets.size() == 1) staging = last;
    // Pipeline stages of a tied model sum wte's gradient after the buckets, a bucket's bytes of
    // it at a time (Trainer::sum_tied_shards).
    if (cfg.tied_embeddings && l.pp > 1 && (stage_index == 0 || stage_index == l.pp - 1)) {
      const int64_t table = 4 * (units.front().second - units.front().first);
      staging = std::max(staging, held(dev, std::min(table, l.bucket_bytes / 4 * 4)));
    }
    m.communication += staging;
  }
  if (z3) {
    int64_t blk = 0;
    const size_t nb = units.size();
    const bool has_emb = stage.first == 0 || (cfg.tied_embeddings && stage.last < 0) ||
                         (cfg.tied_embeddings && stage.last == cfg.n_layer);
    const int64_t emb = has_emb ? held(dev, e * (units.front().second - units.front().first)) : 0;
    const bool has_head = stage.last < 0 || stage.last == cfg.n_layer;
    const int64_t head = has_head ? held(dev, e * (units.back().second - units.back().first)) : 0;
    for (size_t u = has_emb ? 1 : 0; u < nb - (has_head ? 1 : 0); ++u) {
      blk = std::max(blk, held(dev, e * (units[u].second - units[u].first)));
    }
    // Gathered at once: a block and the next (or the embedding, or the head: the last block's
    // compute prefetches it), or the head and the tied embedding it reads; kept from the
    // forward to the backward, every unit's by the forward's end.
    int64_t kept = 0;
    for (const auto& [lo, hi] : units) kept += held(dev, e * (hi - lo));
    m.communication +=
        l.keep_gathered ? kept : std::max({2 * blk, blk + emb, blk + head, head + emb});
  }
  // The device kernels' scratch (the CUDA backend's one workspace, grown to the largest
  // request and kept: the attention backward's row statistics, the embedding backward's partial
  // sums, the bias gradients' partial rows, the norms' partial sums, the optimizer's tables) and
  // the step's loss and statistics buffers. Not counted: cuBLASLt's 32 MiB, which it takes from
  // the driver, not from nuri's allocator (it is in the usable fraction's margin).
  const int64_t bt = l.micro_batch * seq_len;
  if (dev.gpu) {
    const int64_t h = cfg.n_head / l.tp;
    const int64_t attn = 4 * l.micro_batch * h * seq_len;
    const int64_t unique = std::min(bt, cfg.vocab_size);
    const int64_t slots = bt / 64 + unique;
    const int64_t emb = stage.first == 0 ? 4 * (bt + 8 * slots) + 4 * slots * cfg.d_model : 0;
    const int64_t qkv = (cfg.n_head + 2 * cfg.n_kv_head) * cfg.head_dim();
    const int64_t widest = cfg.bias ? std::max({qkv, cfg.d_ff / l.tp * 2, cfg.d_model}) : qkv;
    const int64_t bias = cfg.bias || cfg.qkv_bias ? 4 * ceil_div(bt, 256) * widest : 0;
    m.workspace = held(dev, std::max({attn, emb, bias, norm_backward_workspace_bound(cfg, rows),
                                      optimizer_workspace_bound(cfg, place, stage)}));
  }
  m.workspace += held(dev, 4 * (l.grad_accum + 2));
  if (l.pp > 1 && stage_index == l.pp - 1) m.workspace += held(dev, 4 * l.grad_accum);
  return m;
}

MemoryPlan estimate_peak_memory(const ModelConfig& cfg, const Layout& layout, int64_t seq_len,
                                const DeviceProfile& device, int* worst_stage) {
  MemoryPlan worst;
  int at = 0;
  for (int s = 0; s < layout.pp; ++s) {
    const MemoryPlan m = estimate_memory(cfg, layout, seq_len, device, s);
    if (s == 0 || m.peak() > worst.peak()) {
      worst = m;
      at = s;
    }
  }
  if (worst_stage) *worst_stage = at;
  return worst;
}

double model_flops_per_token(const ModelConfig& cfg, int64_t seq_len) {
  NURI_CHECK(seq_len >= 1, "model_flops_per_token: seq_len is ", seq_len,
             "; it must be at least 1");
  const UnitCosts u = unit_costs(cfg, seq_len);
  double f = u.embedding + u.head;
  for (double b : u.blocks) f += b;
  return f;
}

double hardware_flops_per_token(const ModelConfig& cfg, int64_t seq_len, Recompute recompute,
                                int64_t every) {
  NURI_CHECK(every >= 1, "hardware_flops_per_token: recompute_every is ", every,
             "; it must be at least 1");
  double f = model_flops_per_token(cfg, seq_len);
  if (recompute == Recompute::full) {
    const UnitCosts u = unit_costs(cfg, seq_len);
    for (int64_t l = 0; l < cfg.n_layer; l += every) f += u.blocks[size_t(l)] / 3.0;
  }
  return f;
}

StepTime estimate_step_time(const ModelConfig& cfg, const Layout& l, int64_t seq_len,
                            const DeviceProfile& dev, int nodes) {
  check_layout(cfg, l, seq_len, "estimate_step_time");
  NURI_CHECK(nodes >= 1, "estimate_step_time: nodes is ", nodes, "; it must be at least 1");
  const int per_node = std::max(1, dev.devices_per_node);
  // (A GPU a rank; CPU ranks share their host, as many as it is given.)
  NURI_CHECK(!dev.gpu || int64_t(l.dp) * l.tp * l.pp <= int64_t(nodes) * per_node,
             "estimate_step_time: the layout's ", int64_t(l.dp) * l.tp * l.pp, " ranks (dp x tp "
             "x pp) need more than ", nodes, " node(s) of ", per_node, " ", dev.name,
             ": give nodes");
  const UnitCosts u = unit_costs(cfg, seq_len);
  const std::vector<int64_t> first =
      l.pp > 1 ? pipeline_stages(cfg, l.pp, seq_len) : std::vector<int64_t>{0, cfg.n_layer};
  const int64_t bt = l.micro_batch * seq_len;
  const int64_t e = dev.gpu ? 2 : 4;
  const char* norm_kind = cfg.norm == NormKind::rmsnorm ? "rmsnorm" : "layernorm";
  const double m = double(l.grad_accum);
  // Per micro-batch on each stage: its products, attention, memory-bound work and collectives;
  // the slowest stage sets the pace of the pipeline.
  StepTime best;
  double slowest = -1;
  for (int s = 0; s < l.pp; ++s) {
    // Products: each of a block's four (q/k/v, the attention output, the MLP's up (| gate) and
    // down) and the head, per token 2·K·N FLOPs a pass (forward, input and weight gradients) at
    // the speed of the product's smallest dimension (rows, K or N: calibrate's table is by
    // it); a fully recomputed block runs its forward twice. Attention at the attention speed
    // (unit_costs' FLOPs).
    const double c = double(cfg.d_model), hd = double(cfg.head_dim()), tpd = double(l.tp);
    const double rows = double(bt);
    auto product = [&](double k, double n, double forwards) {
      return 2.0 * k * n * (forwards + 2.0) / dev.matmul_rate(std::min({k, n, rows}));
    };
    const double q = double(cfg.n_head) * hd / tpd, kv = double(cfg.n_kv_head) * hd / tpd;
    const double up = (cfg.mlp == MlpKind::swiglu ? 2.0 : 1.0) * double(cfg.d_ff) / tpd;
    const double down = double(cfg.d_ff) / tpd;
    double per_token = 0, attention = 0;
    for (int64_t b = first[size_t(s)]; b < first[size_t(s) + 1]; ++b) {
      const bool again = l.recompute == Recompute::full && b % l.recompute_every == 0;
      const double fw = again ? 2.0 : 1.0;
      per_token += product(c, q + 2 * kv, fw) + product(q, c, fw) + product(c, up, fw) +
                   product(down, c, fw);
      attention += (again ? 4.0 / 3.0 : 1.0) * u.block_attention / tpd;
    }
    if (s == l.pp - 1) per_token += product(c, double(cfg.padded_vocab()) / tpd, 1.0);
    const double compute = rows * (per_token + attention / dev.attention_rate(hd, double(seq_len)));
    // The memory-bound ops' elements a token moves (read and written), by kind, each at its
    // own speed: per block the two norms fused with the residual add (forward 4C each,
    // backward 4C each; the rows of this rank under sp), the activation (GELU: 2F forward, 3F
    // backward; SwiGLU: 3F and 5F) and RoPE on q and k (forward and backward, 2 each);
    // recomputation runs the forward's again (selective: the norms and the activation; full:
    // all of it). The head: the final norm and the cross-entropy over this rank's vocabulary
    // columns (f32 logits: read, then read and written).
    const double f = double(cfg.d_ff) / l.tp;
    const double stream = (l.sp && l.tp > 1) ? c / l.tp : c;
    const double rope = cfg.position == PositionKind::rope
                            ? double(cfg.n_head + cfg.n_kv_head) / l.tp * double(cfg.head_dim())
                            : 0.0;
    const bool swiglu = cfg.mlp == MlpKind::swiglu;
    const double norms_fwd = 8 * stream, act_fwd = (swiglu ? 3 : 2) * f, rope_fwd = 2 * rope;
    double norm = 0, act = 0, rot = 0;
    for (int64_t b = first[size_t(s)]; b < first[size_t(s) + 1]; ++b) {
      norm += 2 * norms_fwd;
      act += act_fwd + (swiglu ? 5 : 3) * f;
      rot += 2 * rope_fwd;
      if (l.recompute != Recompute::none && b % l.recompute_every == 0) {
        norm += norms_fwd;
        act += act_fwd;
        if (l.recompute == Recompute::full) rot += rope_fwd;
      }
    }
    double loss = 0;
    if (s == l.pp - 1) {
      norm += 8 * stream;
      loss = 3.0 * double(cfg.padded_vocab()) / l.tp;
    }
    const double elementwise =
        double(bt) *
        (double(e) * norm / dev.bandwidth(norm_kind) +
         double(e) * act / dev.bandwidth(swiglu ? "swiglu" : "gelu") +
         double(e) * rot / dev.bandwidth("rope") + 4.0 * loss / dev.bandwidth("cross_entropy"));
    // Tensor parallelism: per block two all-reduces of the stream forward and two backward
    // (sequence parallelism: reduce-scatters and all-gathers, the same bus bytes), plus one
    // forward again for a fully recomputed block; the embedding's and the head's sums.
    double tp = 0;
    if (l.tp > 1) {
      const double bytes = double(e * bt * cfg.d_model), n = double(l.tp);
      const double one =
          2.0 * (n - 1) / n * bytes / dev.intra_node_bandwidth + dev.collective_latency;
      const int64_t blocks = first[size_t(s) + 1] - first[size_t(s)];
      double calls = 4.0 * double(blocks) + (s == 0 ? 2.0 : 0.0) + (s == l.pp - 1 ? 2.0 : 0.0);
      if (l.recompute == Recompute::full) {  // the recomputed blocks: b % every == 0
        for (int64_t b = first[size_t(s)]; b < first[size_t(s) + 1]; ++b) {
          calls += b % l.recompute_every == 0 ? 2.0 : 0.0;
        }
      }
      tp = calls * one;
    }
    // Pipeline: the stream's two tensors forward and its gradient back, point to point.
    double pp = 0;
    if (l.pp > 1) {
      // The stages run through the ranks in order: with several nodes some pair of
      // consecutive stages is on two, and the slowest stage sets the pace.
      const bool cross = nodes > 1;
      const double bw = cross ? dev.inter_node_bandwidth : dev.intra_node_bandwidth;
      const double sent = (l.sp && l.tp > 1) ? double(bt) / l.tp : double(bt);
      pp = 3.0 * double(e) * sent * double(cfg.d_model) / bw + 2 * dev.collective_latency;
    }
    const double per_micro = compute + elementwise + tp + pp;
    if (per_micro > slowest) {
      slowest = per_micro;
      best.compute = compute * m;
      best.elementwise = elementwise * m;
      best.tp_comm = tp * m;
      best.pp_comm = pp * m;
      best.bubble = double(l.pp - 1) * per_micro;  // 1F1B: (m + p − 1) micro-batch times
    }
  }
  // The window data parallelism's traffic can hide in: the step's forward and backward (the
  // backward two thirds of them), before the optimizer, which comes after every reduction.
  const double forward_backward = best.compute + best.elementwise;
  // The optimizer: the gradients' norm reads them, AdamW reads weights, gradients and both
  // moments and writes three of them (32 bytes a parameter in f32), on this rank's shard; a
  // GPU also writes the bf16 copy.
  const auto units = unit_ranges(cfg, {0, l.tp}, stage_of(cfg, l, seq_len, 0));
  const int64_t psi = units.back().second;
  const double opt_params = double(l.zero >= 1 ? ceil_div(psi, l.dp) : psi);
  best.elementwise += opt_params * (32.0 + (dev.gpu ? 2.0 : 0.0)) / dev.bandwidth("adamw");
  // Data parallelism: the gradient reduction (ZeRO 0, 1: an all-reduce of the f32 gradients
  // during the last micro-batch's backward; 2, 3: a reduce-scatter during every one), ZeRO 3's
  // gathers before each unit's forward and backward (prefetched during the unit before), and
  // the updated weights' all-gather after the optimizer (ZeRO 1, 2), which nothing hides.
  // Reductions overlap only where the progress thread runs them: not on GPU ranks with tensor
  // or pipeline parallelism (NCCL's thread rules), whose gradients are reduced after the
  // backward and whose gathers wait in the open. The last bucket's share is always exposed.
  if (l.dp > 1) {
    const double n = double(l.dp), ring = (n - 1) / n;
    // A group is tp · dp consecutive ranks from a multiple of that: on two nodes when it is
    // larger than one, or does not divide one evenly (a group straddles a boundary).
    const int64_t group = int64_t(l.tp) * l.dp;
    const bool cross = nodes > 1 && (group > per_node || per_node % group != 0);
    const double bw = cross ? dev.inter_node_bandwidth : dev.intra_node_bandwidth;
    const double grads = 4.0 * double(psi);
    const double buckets = std::max(1.0, grads / double(l.bucket_bytes));
    const double reduce =
        (l.zero <= 1 ? 2 : m) * ring * grads / bw + buckets * dev.collective_latency;
    // ZeRO 3: every unit gathered in each micro-batch's forward and backward (keep_gathered:
    // in the forward only, the backward finding it gathered); the first unit of each pass
    // (nothing before it to prefetch during) waits in the open.
    const double passes = l.keep_gathered ? 1.0 : 2.0;
    const double gathers =
        l.zero == 3 ? passes * m * (ring * double(e) * double(psi) / bw +
                                    double(units.size()) * dev.collective_latency)
                    : 0.0;
    const int64_t first_sizes =
        units.front().second - units.front().first +
        (l.keep_gathered ? 0 : units.back().second - units.back().first);
    const double first_units =
        l.zero == 3
            ? m * (ring * double(e) * double(first_sizes) / bw + passes * dev.collective_latency)
            : 0.0;
    const double after =
        (l.zero == 1 || l.zero == 2) ? ring * double(e) * double(psi) / bw : 0.0;
    const bool overlaps = l.overlap && !(dev.gpu && (l.tp > 1 || l.pp > 1));
    double window = 0;
    if (overlaps) {
      const double backward = forward_backward * 2.0 / 3.0;
      window = l.zero <= 1 ? backward / double(m) : l.zero == 2 ? backward : forward_backward;
    }
    best.dp_comm =
        std::max(reduce + gathers - first_units - window, reduce / buckets) + after + first_units;
  }
  return best;
}

namespace {

// Seconds per call of fn: the median of at least five timed calls (after one warm-up), as many
// as `budget` seconds allow. The median, as other work on the machine only ever adds time.
// `ranks` (fn a collective over them): every rank makes as many calls as rank 0's clock allows.
template <class F>
double time_per_call(Backend& be, double budget, F&& fn, Communicator* ranks = nullptr) {
  using Clock = std::chrono::steady_clock;
  fn();
  be.synchronize();
  std::vector<double> calls;
  const auto t0 = Clock::now();
  auto more = [&] {
    bool go = calls.size() < 5 || std::chrono::duration<double>(Clock::now() - t0).count() < budget;
    if (ranks && ranks->size() > 1) {
      Tensor flag = Tensor::empty({1}, DType::f32);
      flag.data<float>()[0] = go ? 1.f : 0.f;
      ranks->broadcast(flag, 0);
      go = flag.data<float>()[0] != 0;
    }
    return go;
  };
  while (more()) {
    const auto c0 = Clock::now();
    fn();
    be.synchronize();
    calls.push_back(std::chrono::duration<double>(Clock::now() - c0).count());
  }
  std::nth_element(calls.begin(), calls.begin() + calls.size() / 2, calls.end());
  return calls[calls.size() / 2];
}

Tensor filled(Backend& be, const Shape& shape, DType dt, float value) {
  NURI_CHECK(dt == DType::f32 || dt == DType::bf16, "calibrate: compute dtype ", dtype_name(dt));
  Tensor host = Tensor::empty(shape, dt);
  for (int64_t i = 0; i < host.numel(); ++i) {
    const float x = value * float((i % 13) - 6);
    if (dt == DType::f32) {
      host.data<float>()[i] = x;
    } else {
      host.data<bf16_t>()[i] = f32_to_bf16(x);
    }
  }
  Tensor out = be.empty(shape, dt);
  be.copy(host, out);
  return out;
}

// FLOP/s of a product's forward and both backward products, x [M, K] · w [N, K]ᵀ.
double product_speed(Backend& be, DType dt, int64_t m, int64_t k, int64_t n, double budget) {
  const Tensor x = filled(be, {m, k}, dt, 0.01f), w = filled(be, {n, k}, dt, 0.01f);
  const Tensor y = be.empty({m, n}, dt), dx = be.empty({m, k}, dt);
  const Tensor dw = be.empty({n, k}, DType::f32);
  const double s = time_per_call(be, budget, [&] {
    be.matmul(x, w, Tensor(), y, Activation::none, Tensor(), Tensor());
    be.matmul_backward_input(y, w, dx, false, Tensor());
    be.matmul_backward_weight(y, x, dw, false);
  });
  return 3.0 * 2.0 * double(m) * double(k) * double(n) / s;
}

}  // namespace

DeviceProfile calibrate_device(Backend& be, Communicator* comm, const DeviceProfile& base,
                               double budget) {
  DeviceProfile p = base;
  const DType dt = be.compute_dtype();
  p.gpu = !be.device().is_cpu();
  // Products of 1024 rows at inner widths 64 .. 2048 (N = 4K, a transformer's MLP shape).
  p.matmul_by_width.clear();
  for (int64_t k = 64; k <= 2048; k *= 2) {
    p.matmul_by_width.push_back({double(k), product_speed(be, dt, 1024, k, 4 * k, budget / 2)});
  }
  p.matmul_flops = 0;
  for (const auto& [k, f] : p.matmul_by_width) p.matmul_flops = std::max(p.matmul_flops, f);
  p.matmul_half_width = 0;
  // Causal attention, forward and backward (the FLOPs unit_costs counts: 3 · 2 · T · H · D a
  // token, the mask halving the products), on 2048 tokens with H · D = 256: at T = 512 by head
  // dim 32 (not on a GPU: its kernels take 64 and 128), 64 and 128; at head dim 64 by T = 128
  // and 2048 too, relative to 512.
  auto attention_speed = [&](int64_t d, int64_t t) {
    const int64_t b = 2048 / t, h = 256 / d;
    const Tensor q = filled(be, {b, t, h, d}, dt, 0.01f), k = filled(be, {b, t, h, d}, dt, 0.01f),
                 v = filled(be, {b, t, h, d}, dt, 0.01f);
    const Tensor out = be.empty({b, t, h, d}, dt), lse = be.empty({b, h, t});
    const Tensor dq = be.empty({b, t, h, d}, dt), dk = be.empty({b, t, h, d}, dt),
                 dv = be.empty({b, t, h, d}, dt);
    AttentionOptions causal;
    const double s = time_per_call(be, budget / 2, [&] {
      be.attention(q, k, v, out, lse, causal);
      be.attention_backward(q, k, v, out, lse, out, dq, dk, dv, causal);
    });
    return 3.0 * 2.0 * double(t) * double(h * d) * double(b * t) / s;
  };
  p.attention_by_head_dim.clear();
  for (const int64_t d : {32, 64, 128}) {
    if (d == 32 && p.gpu) continue;
    p.attention_by_head_dim.push_back({double(d), attention_speed(d, 512)});
  }
  const double at_512 = by_width(p.attention_by_head_dim, 64);
  p.attention_by_seq_len = {{128.0, attention_speed(64, 128) / at_512},
                            {512.0, 1.0},
                            {2048.0, attention_speed(64, 2048) / at_512}};
  p.attention_flops = 0;
  for (const auto& [d, f] : p.attention_by_head_dim)
    p.attention_flops = std::max(p.attention_flops, f);
  // Memory-bound work, each kind forward and backward at a transformer's shapes (4096 rows of
  // C = 512, F = 4C), its speed counted in the bytes estimate_step_time charges it.
  {
    const int64_t rows = 4096, c = 512, f = 4 * c, e = int64_t(dtype_size(dt));
    const double budget_each = budget / 2;
    auto rate = [&](const char* kind, double bytes, const std::function<void()>& fn) {
      p.op_bandwidth[kind] = bytes / time_per_call(be, budget_each, fn);
    };
    const Tensor x = filled(be, {rows, c}, dt, 0.01f), res = filled(be, {rows, c}, dt, 0.02f);
    const Tensor sum = be.empty({rows, c}, dt), y = be.empty({rows, c}, dt);
    const Tensor w = filled(be, {c}, DType::f32, 0.1f), bias = filled(be, {c}, DType::f32, 0.f);
    const Tensor mean = be.empty({rows}), rstd = be.empty({rows}), ds = be.empty({rows, c}, dt);
    const Tensor dw = be.empty({c}), db = be.empty({c});
    const double norm_bytes = 8.0 * double(rows * c * e);  // forward 4C, backward 4C a row
    rate("layernorm", norm_bytes, [&] {
      be.layernorm(x, res, w, bias, 1e-5f, sum, y, mean, rstd);
      be.layernorm_backward(y, sum, w, mean, rstd, res, ds, dw, db, false);
    });
    rate("rmsnorm", norm_bytes, [&] {
      be.rmsnorm(x, res, w, 1e-5f, sum, y, rstd);
      be.rmsnorm_backward(y, sum, w, rstd, res, ds, dw, false);
    });
    const Tensor big = filled(be, {rows, 2 * f}, dt, 0.01f), act = be.empty({rows, f}, dt);
    const Tensor dbig = be.empty({rows, 2 * f}, dt);
    const Tensor up = filled(be, {rows, f}, dt, 0.01f);
    rate("gelu", 5.0 * double(rows * f * e), [&] {  // 2F forward, 3F backward
      be.gelu(up, act);
      be.gelu_backward(up, act, act);
    });
    rate("swiglu", 8.0 * double(rows * f * e), [&] {  // 3F forward, 5F backward
      be.swiglu(big, act);
      be.swiglu_backward(big, act, dbig);
    });
    const Tensor qk = filled(be, {4, rows / 4, 8, c / 8}, dt, 0.01f);
    rate("rope", 4.0 * double(rows * c * e), [&] {  // read and written, forward and backward
      be.rope(qk, qk, Rope{}, 0);
      be.rope_backward(qk, qk, Rope{}, 0);
    });
    const int64_t n = 512, v = 8192;
    const Tensor logits = filled(be, {n, v}, DType::f32, 0.01f), dlogits = be.empty({n, v});
    Tensor targets_host = Tensor::empty({n}, DType::i32);
    for (int64_t i = 0; i < n; ++i) targets_host.data<int32_t>()[i] = int32_t((i * 37) % v);
    const Tensor targets = be.empty({n}, DType::i32);
    be.copy(targets_host, targets);
    const Tensor losses = be.empty({n}), lse = be.empty({n}), loss = be.empty({1});
    rate("cross_entropy", 3.0 * 4.0 * double(n * v), [&] {  // f32: read, then read and written
      be.cross_entropy(logits, targets, v, -100, losses, lse, loss);
      be.cross_entropy_backward(logits, targets, lse, v, -100, 1.f, dlogits);
    });
    const int64_t params = int64_t(1) << 22;
    AdamWTensor a{filled(be, {params}, DType::f32, 0.01f), filled(be, {params}, DType::f32, 0.01f),
                  filled(be, {params}, DType::f32, 0.f), filled(be, {params}, DType::f32, 0.f),
                  true};
    const Tensor norm = be.empty({1});
    AdamWParams hp;
    rate("adamw", 32.0 * double(params), [&] {  // the norm reads 4 bytes, AdamW moves 28
      be.global_norm({a.grad}, norm);
      be.adamw({a}, hp);
    });
    p.memory_bandwidth = p.op_bandwidth["adamw"];
  }
  std::string what = "measured by nuri calibrate on " + be.name();
  if (comm && comm->size() > 1) {
    // The all-reduce's bus bandwidth (2 (n - 1) / n of the bytes cross each rank's links) at
    // 64 MiB, and its latency at 4 bytes.
    const Tensor big = be.empty({int64_t(16) << 20}), one = be.empty({1});
    be.zero(big);
    be.zero(one);
    const double n = double(comm->size());
    Communicator* host = comm->host_communicator();
    const double s = time_per_call(be, budget, [&] { comm->all_reduce(big); }, host);
    p.intra_node_bandwidth = p.inter_node_bandwidth = 2.0 * (n - 1) / n * double(big.nbytes()) / s;
    p.collective_latency = time_per_call(be, budget / 4, [&] { comm->all_reduce(one); }, host);
    what += ", " + std::to_string(comm->size()) + " ranks over " + comm->backend_name();
  }
  if (!p.gpu) {
    p.peak_flops = p.matmul_flops;  // no datasheet: MFU against the measured products
    p.memory_bytes = int64_t(sysconf(_SC_PHYS_PAGES)) * int64_t(sysconf(_SC_PAGESIZE));
    p.devices_per_node = 1;
  }
  p.source = what + (p.gpu ? "; peak FLOP/s and memory: " + base.source : "");
  return p;
}

std::vector<PlanEntry> plan_layouts(const PlanRequest& r) {
  const ModelConfig& cfg = r.model;
  cfg.validate();
  const int per_node = r.devices_per_node > 0 ? r.devices_per_node : r.device.devices_per_node;
  NURI_CHECK(per_node >= 1 && r.nodes >= 1, "plan: nodes (", r.nodes, ") and devices per node (",
             per_node, ") must be positive");
  // (bounded as a device profile's: the layouts' loops count to them in int)
  NURI_CHECK(per_node <= 1 << 20 && int64_t(per_node) * r.nodes <= 1 << 24, "plan: ", r.nodes,
             " node(s) of ", per_node, " devices is more than nuri plans for (2^20 devices a "
             "node, 2^24 in all)");
  NURI_CHECK(r.seq_len >= 1 && r.seq_len <= cfg.max_seq_len, "plan: sequence length ", r.seq_len,
             " must be in [1, max_seq_len = ", cfg.max_seq_len, "]");
  NURI_CHECK(r.usable_fraction > 0 && r.usable_fraction <= 1, "plan: the usable fraction of "
             "each device's memory is ", r.usable_fraction, "; give one in (0, 1], e.g. 0.9");
  NURI_CHECK(r.global_batch >= 0 && r.global_batch <= 1 << 22, "plan: global batch ",
             r.global_batch, " sequences; give a positive one up to 2^22 (0: 8 per device)");
  // What the run would refuse whatever the layout, said before any layout is offered.
  check_sliding_window(cfg, r.seq_len);
  NURI_CHECK(!r.device.gpu || std::find(std::begin(kCudaAttentionHeadDims),
                                        std::end(kCudaAttentionHeadDims),
                                        cfg.head_dim()) != std::end(kCudaAttentionHeadDims),
             "plan: the model's heads of ", cfg.head_dim(),
             cfg.head_dim_override > 0 ? " (head_dim)" : " (d_model / n_head)", " have no "
             "attention kernel on a GPU (", r.device.name, "), whose kernels take head dims ",
             cuda_attention_head_dims_text(), ": choose n_head so that d_model / n_head is one "
             "of them, or set head_dim");
  const int world = per_node * r.nodes;
  const int64_t global = r.global_batch > 0 ? r.global_batch : 8 * int64_t(world);
  DeviceProfile dev = r.device;
  dev.devices_per_node = per_node;
  // A GPU's memory is its own; a CPU profile's is the host's, shared by its ranks on the node.
  const int64_t limit =
      int64_t(r.usable_fraction * double(dev.memory_bytes) / (dev.gpu ? 1 : per_node));
  const double model_flops = model_flops_per_token(cfg, r.seq_len);
  std::vector<PlanEntry> out;
  std::vector<int> dps;  // the data-parallel sizes the grids allow
  for (int tp = 1; tp <= per_node; ++tp) {
    if (per_node % tp != 0) continue;
    try {
      check_tensor_parallel(cfg, tp);
    } catch (const Error&) {
      continue;
    }
    for (int pp = 1; pp <= world / tp && pp <= cfg.n_layer; ++pp) {
      if ((world / tp) % pp != 0) continue;
      const int dp = world / tp / pp;
      if (std::find(dps.begin(), dps.end(), dp) == dps.end()) dps.push_back(dp);
      if (global % dp != 0) continue;
      const int64_t per_rank = global / dp;
      for (int64_t mb = 1; mb <= per_rank && mb <= 64; mb *= 2) {
        if (per_rank % mb != 0) continue;
        for (int zero = 0; zero <= (dp > 1 ? 3 : 0); ++zero) {
          for (Recompute rc : {Recompute::none, Recompute::selective, Recompute::full}) {
            for (bool sp : {false, true}) {
              if (sp && (tp == 1 || (mb * r.seq_len) % tp != 0)) continue;
              Layout l;
              l.dp = dp;
              l.tp = tp;
              l.pp = pp;
              l.zero = zero;
              l.recompute = rc;
              l.sp = sp;
              l.micro_batch = mb;
              l.grad_accum = per_rank / mb;
              // (past what check_layout takes: a pipeline's schedule is simulated per micro-batch)
              if (pp > 1 && int64_t(pp) * l.grad_accum > (1 << 22)) continue;
              l.bucket_bytes = r.bucket_bytes;
              l.keep_gathered = r.keep_gathered && zero == 3;
              l.overlap = r.overlap;
              PlanEntry p;
              p.layout = l;
              p.memory = estimate_peak_memory(cfg, l, r.seq_len, dev, &p.worst_stage);
              p.fits = p.memory.peak() <= limit;
              if (!p.fits) {
                p.why = strprintf("needs %.1f GiB on stage %d, %.1f GiB usable",
                                  p.memory.peak() / kGiB, p.worst_stage, double(limit) / kGiB);
              }
              p.time = estimate_step_time(cfg, l, r.seq_len, dev, r.nodes);
              const double tokens = double(global) * double(r.seq_len);
              p.tokens_per_second = tokens / p.time.total();
              p.mfu = model_flops * p.tokens_per_second / (double(world) * dev.peak_flops);
              p.hfu = hardware_flops_per_token(cfg, r.seq_len, rc, l.recompute_every) *
                      p.tokens_per_second / (double(world) * dev.peak_flops);
              out.push_back(p);
            }
          }
        }
      }
    }
  }
  if (out.empty()) {
    std::sort(dps.begin(), dps.end());
    std::string sizes;
    for (int d : dps) sizes += (sizes.empty() ? "" : ", ") + std::to_string(d);
    NURI_CHECK(false, "plan: the global batch of ", global, " sequences splits evenly over none "
               "of the data-parallel sizes ", world, " devices allow with this model (", sizes,
               "); give a global batch that one of them divides");
  }
  // Those that fit, fastest first (speeds within 0.2 % count as one: then the one holding less
  // memory); then the rest, smallest first.
  auto speed_class = [](const PlanEntry& e) {
    return int64_t(std::floor(std::log(std::max(e.tokens_per_second, 1e-30)) / std::log(1.002)));
  };
  std::stable_sort(out.begin(), out.end(), [&](const PlanEntry& a, const PlanEntry& b) {
    if (a.fits != b.fits) return a.fits;
    if (a.fits && speed_class(a) != speed_class(b)) return speed_class(a) > speed_class(b);
    return a.memory.peak() < b.memory.peak();
  });
  return out;
}

std::string plan_report(const PlanRequest& r, const std::vector<PlanEntry>& entries, int rows) {
  const int per_node = r.devices_per_node > 0 ? r.devices_per_node : r.device.devices_per_node;
  const int world = per_node * r.nodes;
  const bool shared = !r.device.gpu && per_node > 1;  // a CPU host's memory, over its ranks
  std::string s = strprintf(
      "%d x %s (%d node%s of %d), %.1f GiB %s (%.0f%% usable), sequence %lld\n", world,
      r.device.name.c_str(), r.nodes, r.nodes == 1 ? "" : "s", per_node,
      double(r.device.memory_bytes) / kGiB,
      shared ? strprintf("a node, shared by its %d ranks", per_node).c_str() : "each",
      100 * r.usable_fraction, (long long)r.seq_len);
  if (!r.device.source.empty()) s += "profile source: " + r.device.source + "\n";
  int fit = 0;
  for (const PlanEntry& e : entries) fit += e.fits ? 1 : 0;
  s += strprintf(
      "%d of %zu layouts fit; best first (memory per device, GiB: parameters gradients "
      "optimizer activations communication workspace)\n",
      fit, entries.size());
  auto g = [](int64_t b) { return double(b) / kGiB; };
  int shown = 0;
  for (const PlanEntry& e : entries) {
    if (!e.fits || shown >= rows) break;
    const MemoryPlan& m = e.memory;
    s += strprintf(
        "%2d. %s\n    %.1f GiB (%.1f %.1f %.1f %.1f %.1f %.1f) | step %.3f s | %.0f tok/s | "
        "MFU %.1f%%%s\n",
        ++shown, e.layout.str().c_str(), g(m.peak()), g(m.parameters), g(m.gradients),
        g(m.optimizer), g(m.activations), g(m.communication), g(m.workspace), e.time.total(),
        e.tokens_per_second, 100 * e.mfu,
        e.layout.recompute == Recompute::full ? strprintf(" (HFU %.1f%%)", 100 * e.hfu).c_str()
                                              : "");
  }
  if (fit < int(entries.size())) {
    // The nearest misses, and what fills them.
    s += strprintf("%zu do not fit; the smallest of them:\n", entries.size() - size_t(fit));
    int listed = 0;
    for (const PlanEntry& e : entries) {
      if (e.fits) continue;
      if (++listed > 3) break;
      s += strprintf("  %s: %s\n    %s\n", e.layout.str().c_str(), e.why.c_str(),
                     e.memory.str().c_str());
    }
  }
  if (fit == 0) {
    s += "nothing fits: add devices or nodes, shorten the sequence, or shrink the global batch\n";
  }
  return s;
}

}  // namespace nuri
