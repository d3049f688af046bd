// The planner (issue #24) on NURI_TEST_BACKEND ("cpu": test_plan, one process and 4 ranks
// torchrun-style; "cuda-emu": test_plan_device, 2 ranks over the emulated NCCL):
// - each layout of the job's size trains two steps on every rank, and the planner's prediction
//   of that rank's peak memory is within 10 % of its allocator's measured peak (on the CPU most
//   to the byte; the exceptions, all high: a rank whose ZeRO shard is smaller than rank 0's,
//   for which the planner counts; ZeRO 3 on a pipeline stage, whose most gathered weights and
//   most gradient staging are counted together though they do not coincide there (one block's
//   weights, +6 to +7 % on these tiny models); ZeRO 2 and 3 ranks whose progress thread kept
//   fewer buckets or units alive at once in a run than the code allows (a block's, +4 to
//   +6 %); on the device the kernels' workspace, bounded from above);
// - (cuda-emu, rank 0) building a GPU rank's model holds no host copy of its weights;
// - (one process) the plan of an allocation lists what fits, best first, and says why the rest
//   does not; MFU's FLOPs are the formula the docs give; the published cases' memory agrees
//   with Megatron's formula; device profiles read back what they wrote and refuse bad files.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
#include <nlohmann/json.hpp>
#include <vector>

#include "../dist/dist_util.h"
#include "../model/head64_model.h"
#include "../test_util.h"
#include "nuri/core/error.h"
#include "nuri/dist/grid.h"
#include "nuri/model/memory.h"
#include "nuri/parallel/data_parallel.h"
#include "nuri/parallel/pipeline.h"
#include "nuri/train/plan.h"
#include "nuri/train/trainer.h"

#ifndef NURI_TEST_BACKEND
#error "NURI_TEST_BACKEND names the backend under test"
#endif

namespace nuri {
namespace {

using test::world;

bool on_device() { return std::string(NURI_TEST_BACKEND) != "cpu"; }

// The memory side of a device: a GPU profile for the emulated one (bf16 compute, the CUDA
// allocator's size classes); the CPU's for the CPU.
DeviceProfile test_device() { return device_profile(on_device() ? "h100-sxm-80gb" : "cpu"); }

struct Case {
  int dp, tp, pp, zero;
  Recompute rc;
  int64_t every;
  bool sp, llama;
  int64_t micro_batch, grad_accum;
  bool keep_gathered = false;  ///< ZeRO 3 keeping each block's weights to its backward
  bool overlap = true;         ///< false: the reductions after the backward
};

Layout layout_of(const Case& c) {
  Layout l;
  l.dp = c.dp;
  l.tp = c.tp;
  l.pp = c.pp;
  l.zero = c.zero;
  l.recompute = c.rc;
  l.recompute_every = c.every;
  l.sp = c.sp;
  l.micro_batch = c.micro_batch;
  l.grad_accum = c.grad_accum;
  l.keep_gathered = c.keep_gathered;
  l.overlap = c.overlap;
  return l;
}

std::string name(const Case& c) {
  return std::string(c.llama ? "llama: " : "gpt2: ") + layout_of(c).str();
}

// Four blocks: each pipeline stage of 2 or 4 holds one or two. The CPU models split over 4
// tensor-parallel ranks (heads, kv heads, d_ff and the padded vocabulary); the device's have
// head dim 64 (its attention kernels' size).
ModelConfig case_model(bool llama) {
  if (on_device()) {
    ModelConfig c = test::head64_model(llama);
    c.n_layer = 4;
    c.n_kv_head = 2;  // tp 2 splits the kv heads too
    return c;
  }
  ModelConfig c;
  c.vocab_size = 257;
  c.d_model = 64;
  c.n_layer = 4;
  c.n_head = 8;
  c.n_kv_head = llama ? 4 : 8;
  c.d_ff = 128;
  c.max_seq_len = 32;
  if (llama) {
    c.norm = NormKind::rmsnorm;
    c.position = PositionKind::rope;
    c.mlp = MlpKind::swiglu;
    c.bias = false;
    c.tied_embeddings = false;
  }
  return c;
}

std::shared_ptr<TokenFile> case_data(const ModelConfig& cfg) {
  std::vector<uint32_t> t(8192);
  for (size_t i = 0; i < t.size(); ++i)
    t[i] = uint32_t((i * 7 + i / 13) % uint32_t(cfg.vocab_size));
  return TokenFile::from_tokens(t, "pattern", uint32_t(cfg.vocab_size));
}

constexpr int64_t kSeq = 32;
double kGiB() { return double(int64_t(1) << 30); }

// Every axis, ZeRO stage and recomputation mode; each job size runs those of its world.
const std::vector<Case>& cases() {
  static const std::vector<Case> all = {
      // one process
      {1, 1, 1, 0, Recompute::none, 1, false, false, 2, 1},
      {1, 1, 1, 0, Recompute::selective, 1, false, true, 4, 2},
      {1, 1, 1, 0, Recompute::full, 2, false, false, 2, 2},
      // 2 ranks
      {2, 1, 1, 0, Recompute::none, 1, false, true, 2, 1},
      {2, 1, 1, 1, Recompute::selective, 1, false, false, 2, 2},
      {2, 1, 1, 2, Recompute::full, 1, false, true, 2, 1},
      {2, 1, 1, 3, Recompute::none, 1, false, false, 2, 2},
      {2, 1, 1, 3, Recompute::selective, 1, false, true, 2, 1, true},
      {2, 1, 1, 2, Recompute::none, 1, false, false, 2, 2, false, false},
      {1, 2, 1, 0, Recompute::none, 1, true, true, 2, 1},
      {1, 1, 2, 0, Recompute::selective, 1, false, false, 2, 4},
      // 4 ranks
      {4, 1, 1, 0, Recompute::none, 1, false, false, 2, 1},
      {4, 1, 1, 1, Recompute::selective, 1, false, true, 2, 1},
      {4, 1, 1, 2, Recompute::none, 1, false, false, 4, 2},
      {4, 1, 1, 3, Recompute::full, 1, false, true, 2, 1},
      {4, 1, 1, 3, Recompute::selective, 1, false, false, 2, 2},
      {2, 2, 1, 0, Recompute::none, 1, true, false, 2, 1},
      {2, 2, 1, 1, Recompute::full, 1, false, true, 2, 1},
      {2, 2, 1, 2, Recompute::selective, 1, true, true, 2, 2},
      {2, 2, 1, 3, Recompute::none, 1, false, false, 2, 1},
      {2, 1, 2, 0, Recompute::none, 1, false, false, 2, 4},
      {2, 1, 2, 1, Recompute::full, 1, false, true, 2, 2},
      {2, 1, 2, 2, Recompute::selective, 1, false, false, 2, 3},
      {2, 1, 2, 3, Recompute::none, 1, false, true, 2, 2},
      {2, 1, 2, 3, Recompute::full, 1, false, false, 2, 2, true},
      {2, 1, 2, 2, Recompute::selective, 1, false, true, 2, 2, false, false},
      {1, 2, 2, 0, Recompute::none, 1, true, false, 2, 4},
      {1, 2, 2, 0, Recompute::full, 2, false, true, 2, 2},
      {1, 4, 1, 0, Recompute::selective, 1, true, false, 2, 1},
      {1, 4, 1, 0, Recompute::none, 1, false, true, 2, 2},
      {1, 1, 4, 0, Recompute::none, 1, false, false, 2, 4},
      {1, 1, 4, 0, Recompute::selective, 1, false, true, 1, 6},
  };
  return all;
}

TEST(Plan, PredictsEachRanksPeakMemoryWithinTenPercent) {
  const int n = world()->size(), rank = world()->rank();
  const DeviceProfile dev = test_device();
  int ran = 0;
  double worst = 0;
  for (const Case& c : cases()) {
    if (c.dp * c.tp * c.pp != n) continue;
    SCOPED_TRACE(name(c));
    const ModelConfig cfg = case_model(c.llama);
    const GridGroups g = make_grid_groups(world(), c.tp, c.pp);
    Transformer m = grid_model(cfg, make_backend(NURI_TEST_BACKEND), 5, g, c.zero, kSeq);
    TrainConfig tc;
    tc.steps = 2;
    tc.micro_batch = c.micro_batch;
    tc.seq_len = kSeq;
    tc.grad_accum = c.grad_accum;
    tc.warmup_steps = 1;
    tc.recompute = c.rc;
    tc.recompute_every = c.every;
    ParallelConfig par;
    par.zero_stage = c.zero;
    par.bucket_bytes = 16 << 10;
    par.tp = c.tp;
    par.pp = c.pp;
    par.sequence_parallel = c.sp;
    par.keep_gathered = c.keep_gathered;
    par.overlap = c.overlap;
    {
      Trainer t(m, tc, case_data(cfg), nullptr, g, par);
      for (int i = 0; i < 2; ++i) t.step();
    }
    const double measured = double(m.memory().peak_bytes);
    Layout l = layout_of(c);
    l.bucket_bytes = par.bucket_bytes;
    const MemoryPlan p = estimate_memory(cfg, l, kSeq, dev, g.coord.pp);
    const double predicted = double(p.peak());
    const double error = (predicted - measured) / measured;
    worst = std::max(worst, std::abs(error));
    // Every rank's line, in rank order.
    for (int r = 0; r < n; ++r) {
      if (r == rank) {
        std::printf(
            "[plan] %s, rank %d (stage %d): measured %.0f, predicted %.0f bytes (%+.1f%%)\n",
            name(c).c_str(), rank, g.coord.pp, measured, predicted, 100 * error);
        std::fflush(stdout);
      }
      world()->barrier();
    }
    // The plan counts the most the code allows. ZeRO 2 and 3 free a
    // gradient bucket on the progress thread when its reduce-scatter lands, which may be before
    // or after the step's peak: a run can hold less at its peak than the plan's two buckets in
    // flight (measured: up to 3.5 % less on a dp 2 x pp 2 stage, from one run to the next).
    // That timing is allowed on top of the 10 %; what is left is the plan's own error.
    int64_t timing = 0;
    if (c.zero >= 2 && c.dp > 1) {
      std::vector<int64_t> sizes;
      for (const auto& [lo, hi] : DataParallel::plan_buckets(m.grad_units(), par.bucket_bytes)) {
        sizes.push_back(4 * (hi - lo));  // f32 gradients
      }
      std::sort(sizes.rbegin(), sizes.rend());
      for (size_t i = 0; i < sizes.size() && i < 2; ++i) timing += sizes[i];
    }
    // The plan is an upper bound: on the CPU to the byte, on cuda-emu with the CUDA allocator's
    // size classes and the kernels' workspace bounded from above.
    EXPECT_GE(error, 0.0) << "rank " << rank << ": predicted low: " << p.str();
    EXPECT_LE(predicted - measured, 0.10 * measured + double(timing))
        << "rank " << rank << ": predicted " << p.str() << "; buckets in flight " << timing;
    ++ran;
  }
  EXPECT_GE(ran, 1) << "no layout of " << n << " ranks";
  if (rank == 0) std::printf("[plan] %d layouts, the largest error %.1f%%\n", ran, 100 * worst);
}

// ---- One process: the plan itself ---------------------------------------------------------------

ModelConfig llama3_8b() {
  ModelConfig c;
  c.vocab_size = 128256;
  c.d_model = 4096;
  c.n_layer = 32;
  c.n_head = 32;
  c.n_kv_head = 8;
  c.d_ff = 14336;
  c.max_seq_len = 8192;
  c.norm = NormKind::rmsnorm;
  c.position = PositionKind::rope;
  c.rope_theta = 500000.f;
  c.mlp = MlpKind::swiglu;
  c.bias = false;
  c.tied_embeddings = false;
  return c;
}

// What the plan leaves out: the host memory of a GPU rank. Building the model draws its weights
// a 64 MiB chunk at a time and copies each to the device, so the host holds no copy of the
// weights (an f32 copy and a bf16 one would be 6 bytes a weight). On cuda-emu the device's
// memory is the process's too: the peak resident set grows by the device buffers alone
// (poisoned, so touched, as they are allocated) and the chunks. Rank 0 of the job only.
TEST(Plan, BuildingAGpuRanksModelHoldsNoHostCopyOfItsWeights) {
  ASSERT_TRUE(on_device()) << "the device's memory is the host's only on cuda-emu: run this "
                              "test in test_plan_device";
  if (world()->rank() != 0) return;
  ModelConfig cfg = model_preset("gpt2-124M");
  cfg.n_layer = 1;  // 45M weights
  std::shared_ptr<Backend> be = make_backend(NURI_TEST_BACKEND);
  test::reset_peak_rss();
  const int64_t before = test::peak_rss_kib();
  Transformer m(cfg, be, 3);
  const int64_t grown = (test::peak_rss_kib() - before) * 1024;
  const int64_t device = m.memory().peak_bytes, psi = m.parameter_count();
  std::printf("[plan] building %lld weights on %s: the resident set grew by %lld bytes, the "
              "device's peak %lld\n",
              (long long)psi, NURI_TEST_BACKEND, (long long)grown, (long long)device);
  EXPECT_GE(device, 10 * psi);  // f32 masters and gradients, the bf16 compute copy
  EXPECT_GE(grown, device) << "the peak resident set was not reset, or the buffers were resident "
                              "before (then this test measures nothing)";
  // A chunk: 64 MiB of f32 weights and their 32 MiB in bf16; 16 MiB of slack.
  EXPECT_LE(grown, device + (int64_t(64 + 32 + 16) << 20))
      << "a host copy of the weights is 6 bytes a weight: " << 6 * psi;
}

// What the run refuses whatever the layout is said before any layout is offered: heads the GPU
// kernels do not take (the demo preset's 32) on a GPU profile, and sequences longer than a
// sliding window.
TEST(Plan, ModelsTheRunWouldRefuseOnEveryLayoutAreRefusedFirst) {
  if (world()->size() != 1) GTEST_SKIP() << "one process";
  PlanRequest r;
  r.model = model_preset("demo");
  r.device = device_profile("h100-sxm-80gb");
  r.seq_len = 256;
  r.global_batch = 8;
  const std::string gpu = test::error_of([&] { plan_layouts(r); });
  EXPECT_NE(gpu.find("plan: the model's heads of 32 (d_model / n_head) have no attention kernel "
                     "on a GPU (h100-sxm-80gb), whose kernels take head dims 64, 128"),
            std::string::npos)
      << gpu;
  r.device = device_profile("cpu");
  EXPECT_FALSE(plan_layouts(r).empty());  // the CPU takes any head dim
  r.model.n_head = r.model.n_kv_head = 4;  // heads of 64
  r.device = device_profile("h100-sxm-80gb");
  EXPECT_FALSE(plan_layouts(r).empty());
  r.model.sliding_window = 128;
  EXPECT_NE(test::error_of([&] { plan_layouts(r); })
                .find("sequence length 256 is longer than the model's sliding window (128)"),
            std::string::npos);
}

// The data-parallel traffic the step time leaves exposed follows what the trainer does: ZeRO 0
// and 1 reduce during the last micro-batch's backward only, so 8 micro-batches of 1 hide an
// eighth of what one of 8 does; the updated weights' all-gather after the optimizer (ZeRO 1, 2)
// is never hidden; GPU ranks with tensor parallelism reduce after the backward, hiding nothing.
TEST(Plan, DataParallelTrafficIsHiddenOnlyWhereTheTrainerOverlapsIt) {
  if (world()->size() != 1) GTEST_SKIP() << "one process";
  const ModelConfig cfg = model_preset("llama-1B");
  const DeviceProfile h100 = device_profile("h100-sxm-80gb");
  auto dp_comm = [&](int dp, int tp, int zero, int64_t mb, int64_t accum) {
    Layout l;
    l.dp = dp;
    l.tp = tp;
    l.zero = zero;
    l.micro_batch = mb;
    l.grad_accum = accum;
    return estimate_step_time(cfg, l, 2048, h100).dp_comm;
  };
  const double psi = double(cfg.num_params());  // (the padded vocabulary's rows add a little)
  const double gather = 7.0 / 8.0 * 2 * psi / h100.intra_node_bandwidth;
  const double reduce = 2 * 7.0 / 8.0 * 4 * psi / h100.intra_node_bandwidth;
  EXPECT_GE(dp_comm(8, 1, 1, 8, 1), gather);  // the all-gather after the optimizer
  EXPECT_GE(dp_comm(8, 1, 2, 8, 1), gather);
  EXPECT_LT(dp_comm(8, 1, 0, 8, 1), gather);  // ZeRO 0: the all-reduce hidden but its tail
  EXPECT_GT(dp_comm(8, 1, 1, 1, 8), dp_comm(8, 1, 1, 8, 1) + 0.5 * reduce);
  // tp 2 on a GPU: the whole all-reduce of the (halved) gradients in the open.
  EXPECT_GE(dp_comm(4, 2, 0, 4, 1), 2 * 3.0 / 4.0 * 4 * psi / 2 / h100.intra_node_bandwidth);
  // The CPU profile's ranks overlap with tp too.
  const DeviceProfile cpu = device_profile("cpu");
  Layout l;
  l.dp = 4;
  l.tp = 2;
  l.micro_batch = 4;
  const StepTime t = estimate_step_time(cfg, l, 2048, cpu);
  EXPECT_LT(t.dp_comm, 2 * 3.0 / 4.0 * 4 * psi / 2 / cpu.intra_node_bandwidth);
}

// What a review of the planner found, each against what the run does: a CPU host's memory is
// shared by its ranks; keep_gathered gathers a unit once a micro-batch; stages on two nodes, and
// a data-parallel group straddling two, cross the slower link; the recomputed blocks of a stage
// are those with b % every == 0 in the whole model; what the run refuses is refused here too.
TEST(Plan, FollowsTheRunAtTheEdges) {
  if (world()->size() != 1) GTEST_SKIP() << "one process";
  const DeviceProfile h100 = device_profile("h100-sxm-80gb");
  {  // 4 CPU ranks on one host share its memory
    PlanRequest r;
    r.model = model_preset("llama-1B");
    r.device = device_profile("cpu");
    r.devices_per_node = 4;
    r.seq_len = 2048;
    r.global_batch = 8;
    const std::vector<PlanEntry> plan = plan_layouts(r);
    const double host = r.usable_fraction * double(r.device.memory_bytes);
    int between = 0;
    for (const PlanEntry& e : plan) {
      EXPECT_EQ(e.fits, double(e.memory.peak()) <= host / 4) << e.layout.str();
      between += double(e.memory.peak()) > host / 4 && double(e.memory.peak()) <= host;
    }
    EXPECT_GT(between, 0) << "no layout tells a host's memory from a quarter of it";
    EXPECT_NE(plan_report(r, plan, 1).find("GiB a node, shared by its 4 ranks"),
              std::string::npos);
  }
  const ModelConfig cfg = model_preset("llama-1B");
  {  // ZeRO 3 keeping its units: one gather of each a micro-batch, not two (tp 2 on a GPU:
     // nothing hides them)
    Layout l;
    l.dp = 4;
    l.tp = 2;
    l.zero = 3;
    l.micro_batch = 1;
    l.grad_accum = 4;
    const double twice = estimate_step_time(cfg, l, 2048, h100).dp_comm;
    l.keep_gathered = true;
    const double once = estimate_step_time(cfg, l, 2048, h100).dp_comm;
    const auto units = unit_ranges(cfg, {0, 2}, PipelineStage{});
    const double psi = double(units.back().second);
    const double gather = 3.0 / 4.0 * 2 * psi / h100.intra_node_bandwidth +
                          double(units.size()) * h100.collective_latency;
    EXPECT_NEAR(twice - once, 4 * gather, 1e-9 * twice);
    // Where the forward and backward hide the gathers (the CPU's slow step), what stays in the
    // open is each pass's first unit: the embedding alone with keep_gathered (the head's
    // gather in the backward is not made).
    const DeviceProfile cpu = device_profile("cpu");
    l.tp = 1;
    l.keep_gathered = false;
    const double both = estimate_step_time(cfg, l, 2048, cpu).dp_comm;
    l.keep_gathered = true;
    const double first = estimate_step_time(cfg, l, 2048, cpu).dp_comm;
    const auto whole = unit_ranges(cfg, {0, 1}, PipelineStage{});
    const double head = double(whole.back().second - whole.back().first);
    EXPECT_NEAR(both - first,
                4 * (3.0 / 4.0 * 4 * head / cpu.intra_node_bandwidth + cpu.collective_latency),
                1e-9 * both);
  }
  {  // Node boundaries: tp 2 x pp 8 on two nodes of 8; dp 3 x pp 8 on three
    DeviceProfile flat = h100;  // the same, with the nodes joined as fast as a node inside
    flat.inter_node_bandwidth = h100.intra_node_bandwidth;
    Layout l;
    l.tp = 2;
    l.pp = 8;
    l.grad_accum = 8;
    EXPECT_GT(estimate_step_time(cfg, l, 2048, h100, 2).pp_comm,
              2 * estimate_step_time(cfg, l, 2048, flat, 2).pp_comm);
    l.tp = 1;
    l.dp = 3;
    EXPECT_GT(estimate_step_time(cfg, l, 2048, h100, 3).dp_comm,
              2 * estimate_step_time(cfg, l, 2048, flat, 3).dp_comm);
    l.dp = 4;
    EXPECT_NE(test::error_of([&] { estimate_step_time(cfg, l, 2048, h100, 3); })
                  .find("the layout's 32 ranks (dp x tp x pp) need more than 3 node(s) of 8"),
              std::string::npos);
  }
  {  // A block a stage, recomputing every 2nd: the last stage (the slowest: a large head)
     // recomputes none of its blocks (block 3), so its tp collectives are 4 + the head's 2.
    ModelConfig c = model_preset("llama-tiny");
    c.n_layer = 4;
    c.vocab_size = 1 << 17;
    Layout l;
    l.tp = 2;
    l.pp = 4;
    l.grad_accum = 4;
    l.recompute = Recompute::full;
    l.recompute_every = 2;
    const StepTime t = estimate_step_time(c, l, 128, h100);
    const double bytes = 2.0 * 128 * double(c.d_model);
    const double one = 2.0 * 1 / 2 * bytes / h100.intra_node_bandwidth + h100.collective_latency;
    EXPECT_NEAR(t.tp_comm, 4 * 6 * one, 1e-9 * t.tp_comm);
  }
  // Bad input the run would refuse.
  Layout sp;
  sp.tp = 2;
  sp.sp = true;
  EXPECT_NE(test::error_of([&] { estimate_memory(cfg, sp, 1023, h100); })
                .find("with sp a micro-batch's 1023 tokens (micro_batch x seq_len) must split "
                      "evenly over tp = 2"),
            std::string::npos);
  sp.tp = 1;
  EXPECT_NE(test::error_of([&] { estimate_step_time(cfg, sp, 1024, h100); })
                .find("sequence parallelism (sp) needs tp > 1"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] { estimate_memory(cfg, Layout{}, cfg.max_seq_len + 1, h100); })
                .find("it must be in [1, max_seq_len"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] { hardware_flops_per_token(cfg, 2048, Recompute::full, 0); })
                .find("recompute_every is 0"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] { model_flops_per_token(cfg, 0); }).find("seq_len is 0"),
            std::string::npos);
  PlanRequest r;  // no data-parallel size of 8 ranks divides 7 sequences for 2 kv heads
  r.model = model_preset("llama-tiny");
  r.device = device_profile("cpu");
  r.devices_per_node = 8;
  r.seq_len = 64;
  r.global_batch = 7;
  const std::string none = test::error_of([&] { plan_layouts(r); });
  EXPECT_NE(none.find("the global batch of 7 sequences splits evenly over none of the "
                      "data-parallel sizes 8 devices allow with this model (2, 4, 8)"),
            std::string::npos) << none;
  nlohmann::json j = nlohmann::json::parse(device_profile_to_json(h100));
  j["matmul_half_width"] = -64;
  EXPECT_NE(test::error_of([&] { device_profile_from_json(j.dump(), "p.json"); })
                .find("\"matmul_half_width\" must be 0 or more"),
            std::string::npos);
  j["matmul_half_width"] = 0;
  j["devices_per_node"] = 2.5;
  EXPECT_NE(test::error_of([&] { device_profile_from_json(j.dump(), "p.json"); })
                .find("\"devices_per_node\" must be a whole number of devices, got 2.5"),
            std::string::npos);
}

TEST(Plan, ListsWhatFitsBestFirstAndSaysWhyTheRestDoesNot) {
  if (world()->size() != 1) GTEST_SKIP() << "one process";
  PlanRequest r;
  r.model = llama3_8b();
  r.device = device_profile("h100-sxm-80gb");
  r.nodes = 1;
  r.seq_len = 8192;
  r.global_batch = 32;
  const std::vector<PlanEntry> plan = plan_layouts(r);
  ASSERT_FALSE(plan.empty());
  const int64_t usable = int64_t(r.usable_fraction * double(r.device.memory_bytes));
  size_t fit = 0;
  while (fit < plan.size() && plan[fit].fits) ++fit;
  ASSERT_GT(fit, 0u) << "Llama-3-8B trains on 8 H100s";
  ASSERT_LT(fit, plan.size())
      << "and not in every layout (dp 8 without ZeRO needs 18 bytes a weight)";
  for (size_t i = 0; i < plan.size(); ++i) {
    const PlanEntry& e = plan[i];
    EXPECT_EQ(e.layout.world(), 8);
    EXPECT_EQ(e.layout.dp * e.layout.micro_batch * e.layout.grad_accum, 32) << e.layout.str();
    EXPECT_EQ(e.fits, e.memory.peak() <= usable) << e.layout.str();
    if (i < fit && i + 1 < fit) {  // as fast within 0.2 % counts as one: less memory first
      EXPECT_GE(e.tokens_per_second * 1.002, plan[i + 1].tokens_per_second) << "best first";
      if (e.tokens_per_second < plan[i + 1].tokens_per_second) {
        EXPECT_LE(e.memory.peak(), plan[i + 1].memory.peak());
      }
    }
    if (!e.fits) {
      EXPECT_NE(e.why.find("GiB"), std::string::npos) << e.why;
    }
    EXPECT_GT(e.mfu, 0);
    EXPECT_LT(e.mfu, 1);
  }
  // No ZeRO and no tensor or pipeline parallelism holds 18 bytes a weight: 8.03e9 · 18 > 80 GB.
  for (const PlanEntry& e : plan) {
    if (e.layout.dp == 8 && e.layout.zero == 0) {
      EXPECT_FALSE(e.fits) << e.layout.str();
    }
  }
  const std::string text = plan_report(r, plan, 5);
  EXPECT_NE(text.find(" 1. "), std::string::npos) << text;
  EXPECT_NE(text.find("do not fit"), std::string::npos) << text;
  EXPECT_NE(text.find("\nprofile source: " + r.device.source + "\n"), std::string::npos) << text;
  EXPECT_FALSE(r.device.source.empty());
  std::printf("%s", text.c_str());
}

TEST(Plan, MfuCountsTheFlopsOfTheDocumentedFormula) {
  if (world()->size() != 1) GTEST_SKIP() << "one process";
  // 6 FLOPs per weight of every product (the LM head's included, the embedding's lookup not),
  // and attention's 6 · 2 · T · H · D per block halved for the causal mask.
  for (const ModelConfig& cfg : {model_preset("gpt2-124M"), llama3_8b()}) {
    const int64_t T = 1024;
    const double c = double(cfg.d_model), hd = double(cfg.head_dim());
    const double q = double(cfg.n_head) * hd, kv = double(cfg.n_kv_head) * hd;
    const double mlp = (cfg.mlp == MlpKind::swiglu ? 3.0 : 2.0) * c * double(cfg.d_ff);
    const double block = c * (q + 2 * kv) + q * c + mlp;
    const double want = 6.0 * (double(cfg.n_layer) * block + double(cfg.padded_vocab()) * c) +
                        double(cfg.n_layer) * 6.0 * 2.0 * double(T) * q / 2.0;
    EXPECT_NEAR(model_flops_per_token(cfg, T), want, 1e-9 * want);
    // Full recomputation runs each block's forward again: a third of its FLOPs.
    const double attention = 6.0 * 2.0 * double(T) * q / 2.0;
    EXPECT_NEAR(hardware_flops_per_token(cfg, T, Recompute::full),
                want + double(cfg.n_layer) * (6.0 * block + attention) / 3.0, 1e-9 * want);
    EXPECT_EQ(hardware_flops_per_token(cfg, T, Recompute::selective),
              model_flops_per_token(cfg, T));
  }
}

// Megatron-LM's formulas (Korthikanti et al., "Reducing Activation Recomputation in Large
// Transformer Models", 2022): model state 18 bytes a weight (bf16 weights 2, f32 gradients 4,
// f32 master weights and Adam's two moments 12), its distributed optimizer 6 + 12/d; per block
// and micro-batch s·b·h·(34 + 5·a·s/h) bytes of activations, 34·s·b·h/t with tensor and
// sequence parallelism and selective recomputation (the 5·a·s/h of scores and their dropout is
// what a fused attention never stores). The first pipeline stage holds p micro-batches of its
// L/p blocks: L blocks' worth.
struct Published {
  const char* what;
  ModelConfig cfg;
  Layout layout;
  int64_t seq;
};

TEST(Plan, PublishedCasesAgreeWithMegatronsFormula) {
  if (world()->size() != 1) GTEST_SKIP() << "one process";
  const DeviceProfile h100 = device_profile("h100-sxm-80gb");
  auto layout = [](int dp, int tp, int pp, int zero, Recompute rc, bool sp, int64_t b, int64_t m) {
    Layout l;
    l.dp = dp;
    l.tp = tp;
    l.pp = pp;
    l.zero = zero;
    l.recompute = rc;
    l.sp = sp;
    l.micro_batch = b;
    l.grad_accum = m;
    return l;
  };
  ModelConfig gpt3 = model_preset("gpt2-124M");  // GPT-3 175B: 96 blocks of 12288, 96 heads
  gpt3.d_model = 12288;
  gpt3.n_layer = 96;
  gpt3.n_head = gpt3.n_kv_head = 96;
  gpt3.d_ff = 4 * 12288;
  gpt3.max_seq_len = 2048;
  const std::vector<Published> cases = {
      {"Llama-3-8B, 8 x H100, seq 8192, tp 8 sp, selective", llama3_8b(),
       layout(1, 8, 1, 0, Recompute::selective, true, 1, 32), 8192},
      {"Llama-3-8B, 8 x H100, seq 8192, dp 8 ZeRO 1, full", llama3_8b(),
       layout(8, 1, 1, 1, Recompute::full, false, 1, 4), 8192},
      {"GPT-3 175B, 64 x H100, seq 2048, tp 8 pp 8 sp, selective", gpt3,
       layout(1, 8, 8, 0, Recompute::selective, true, 1, 64), 2048},
  };
  std::printf(
      "| case | model state: nuri | Megatron | activations: nuri | Megatron (34sbh/t; "
      "full recomputation 2sbh) |\n"
      "|---|---|---|---|---|\n");
  for (const Published& c : cases) {
    const ModelConfig& cfg = c.cfg;
    const Layout& l = c.layout;
    const MemoryPlan m = estimate_memory(cfg, l, c.seq, h100, 0);
    // Model state of stage 0 (the embedding and its share of blocks), by Megatron's bytes a
    // weight over this rank's weights.
    const PipelineStage st =
        l.pp > 1 ? PipelineStage{0, pipeline_stages(cfg, l.pp, c.seq)[1]} : PipelineStage{};
    const double psi = double(unit_ranges(cfg, {0, l.tp}, st).back().second);
    const double megatron_state = l.zero >= 1 ? (6.0 + 12.0 / l.dp) * psi : 18.0 * psi;
    const double state = double(m.parameters + m.gradients + m.optimizer);
    EXPECT_NEAR(state, megatron_state, 0.01 * megatron_state) << c.what;
    // Activations: the blocks' (L blocks' worth on the first stage), full recomputation keeping
    // each block's input alone (2·s·b·h, per Megatron's section 4's "2sbhL").
    const double s = double(c.seq), b = double(l.micro_batch), h = double(cfg.d_model);
    const double blocks = double(cfg.n_layer);
    const double megatron_acts = l.recompute == Recompute::full
                                     ? 2.0 * s * b * h * blocks
                                     : 34.0 * s * b * h / double(l.tp) * blocks;
    ActivationShape a;
    a.b = l.micro_batch;
    a.t = c.seq;
    a.act = DType::bf16;
    a.place = {0, l.tp};
    a.sp = l.sp;
    a.recompute = l.recompute;
    a.stage = st;
    a.slots = l.pp > 1 ? pipeline_buffers(l.pp, int(l.grad_accum), 1, 0, 0).slots : 1;
    a.device = true;
    // What the blocks keep, without the head and the shared scratch: the plan less a model of
    // no blocks kept (the same shape, recomputation of every block dropping all but inputs is
    // Megatron's full; here the difference between the plan and its non-block tensors).
    double kept = 0;
    for (const PlannedTensor& t : activation_plan(cfg, a)) {
      if (t.what.rfind("slot: ", 0) == 0 && t.what.find("head") == std::string::npos &&
          t.what.find("final norm") == std::string::npos &&
          t.what.find("logits") == std::string::npos && t.what.find("loss") == std::string::npos &&
          t.what.find("ids") == std::string::npos &&
          t.what.find("lse, losses") == std::string::npos) {
        kept += double(t.bytes * t.count);
      }
    }
    std::printf("| %s | %.1f GiB | %.1f GiB | %.1f GiB | %.1f GiB |\n", c.what, state / kGiB(),
                megatron_state / kGiB(), kept / kGiB(), megatron_acts / kGiB());
    EXPECT_GT(kept, 0.7 * megatron_acts) << c.what;
    EXPECT_LT(kept, 2.5 * megatron_acts) << c.what;
  }
}

}  // namespace
}  // namespace nuri

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  nuri::test::world();  // every rank joins before any test
  return RUN_ALL_TESTS();
}
