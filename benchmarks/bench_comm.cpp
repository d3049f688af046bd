// Communication of data-parallel training (issue #9), run under mpirun (or srun) on CPU ranks:
//
//   all_reduce  nuri's Communicator::all_reduce (non-blocking MPI + timeout polling) against
//               MPI_Allreduce called directly (the peer), and MPI_Iallreduce + MPI_Wait (what
//               nuri's call is made of), alternating, f32, 4 KiB … 64 MiB: time, algorithm and
//               bus bandwidth as nccl-tests define them (busbw = algbw · 2(n-1)/n).
//   dp_step     training steps of a model with the gradient reduction overlapped with the
//               backward against the same run reducing after the backward, alternating, for
//               ZeRO 0, 1 and 2: step time, bytes communicated per step (payload and bus), the
//               reduction time and the share of it hidden behind the backward.
//
//   zero3_step  ZeRO 3 against ZeRO 2 on the same ranks, alternating (issue #21): step time,
//               the units' gathers (seconds run, seconds the model waited: the rest was hidden
//               behind the compute), bytes moved per step, and per-rank memory from the
//               allocator against the formulas (weights + gradients + AdamW: 4Ψ + 12Ψ/N for
//               ZeRO 2 on the CPU, whose f32 weights are every rank's; 16Ψ/N for ZeRO 3).
//
//   tp_step     tensor parallelism (issue #22): training steps at tp = 1, 2, 4 … (each tp that
//               divides the ranks and the model; dp = ranks / tp, the same global batch: micro-
//               batch B·tp per rank), alternating, with and without sequence parallelism: step
//               time against tp = 1's (the peer), and the tensor-parallel collectives split out:
//               their seconds per step, calls and bytes.
//
//   pp_step     pipeline parallelism (issue #23): training steps at pp = 1, 2, 4 … (each pp that
//               divides the ranks and the blocks; dp = ranks / pp, 1F1B over the same global
//               batch of --micro micro-batches of B), alternating: step time against pp = 1's (the
//               peer), and the bubble: the share of the step the ranks spent in neither a forward
//               nor a backward (from the timeline, mean over ranks) beside (p − 1)/(m + p − 1).
//
//   mpirun -np 4 --oversubscribe build/benchmarks/bench_comm [--quick] [--reps N] [--model NAME]
//          [--layers L] [--batch B] [--seq T] [--bucket-mb X] [--micro M] [--only NAME]
//          [--json FILE]
// Rank 0 prints one JSON object per measurement. Threads per rank: OMP_NUM_THREADS.
#include <mpi.h>

#include <cstring>
#include <memory>

#include "bench_common.h"
#include "nuri/data/token_file.h"
#include "nuri/dist/communicator.h"
#include "nuri/dist/launch.h"
#include "nuri/parallel/pipeline.h"
#include "nuri/parallel/tensor_parallel.h"
#include "nuri/train/trainer.h"

namespace {

struct Options {
  bool quick = false;
  int reps = 7;
  std::string model = "gpt2-tiny";
  int64_t layers = 8, batch = 4, seq = 64;
  double bucket_mb = 0.25;
  int64_t micro = 16;  // pp_step: micro-batches in the global batch
  std::string json, only;  // only: one benchmark by name (all_reduce, dp_step, zero3_step, tp_step, pp_step)
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "bench_comm: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--quick") o.quick = true;
    else if (a == "--reps") o.reps = std::stoi(value());
    else if (a == "--model") o.model = value();
    else if (a == "--layers") o.layers = std::stoll(value());
    else if (a == "--batch") o.batch = std::stoll(value());
    else if (a == "--seq") o.seq = std::stoll(value());
    else if (a == "--bucket-mb") o.bucket_mb = std::stod(value());
    else if (a == "--micro") o.micro = std::stoll(value());
    else if (a == "--json") o.json = value();
    else if (a == "--only") o.only = value();
    else {
      std::fprintf(stderr, "bench_comm: unknown option %s (see the header of bench_comm.cpp)\n",
                   a.c_str());
      std::exit(2);
    }
  }
  if (o.quick) o.reps = std::min(o.reps, 3);
  return o;
}

/// The slowest rank's value (a collective ends when its last rank does).
double max_over_ranks(double v) {
  double out = 0;
  MPI_Allreduce(&v, &out, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return out;
}

void bench_all_reduce(nuri::Communicator& comm, const Options& o, bench::Output& out) {
  const int n = comm.size();
  const int64_t top = o.quick ? (int64_t(1) << 20) : (int64_t(64) << 20);
  for (int64_t bytes = 4096; bytes <= top; bytes *= 4) {
    const int64_t count = bytes / 4;
    nuri::Tensor t = nuri::Tensor::empty({count}, nuri::DType::f32);
    for (int64_t i = 0; i < count; ++i) t.data<float>()[i] = float(i % 7);
    auto run_nuri = [&] { comm.all_reduce(t, nuri::ReduceOp::sum); };
    auto run_mpi = [&] {
      MPI_Allreduce(MPI_IN_PLACE, t.raw(), int(count), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    };
    auto run_nb = [&] {  // what nuri's call is made of, without its polling
      MPI_Request req;
      MPI_Iallreduce(MPI_IN_PLACE, t.raw(), int(count), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &req);
      MPI_Wait(&req, MPI_STATUS_IGNORE);
    };
    // Calls per sample so a sample lasts ~50 ms; every rank uses rank 0's count.
    comm.barrier();
    const double one = bench::time_per_call(run_mpi, 2);
    int iters = bench::iters_for(max_over_ranks(one), o.quick ? 0.02 : 0.05);
    MPI_Bcast(&iters, 1, MPI_INT, 0, MPI_COMM_WORLD);
    std::vector<double> tn, tm, tb;
    for (int r = 0; r < o.reps; ++r) {
      comm.barrier();
      tn.push_back(max_over_ranks(bench::time_per_call(run_nuri, iters)));
      comm.barrier();
      tm.push_back(max_over_ranks(bench::time_per_call(run_mpi, iters)));
      comm.barrier();
      tb.push_back(max_over_ranks(bench::time_per_call(run_nb, iters)));
    }
    const bench::Stats sn = bench::summarize(tn), sm = bench::summarize(tm);
    const bench::Stats sb = bench::summarize(tb);
    const double bus = 2.0 * (n - 1) / n;
    bench::Json cfg;
    cfg.kv("bytes", bytes).kv("ranks", n).kv("dtype", "f32").kv("threads", bench::bench_threads());
    bench::Json a, b;
    a.stats(sn).kv("algbw_GBps", double(bytes) / sn.median_s / 1e9)
        .kv("busbw_GBps", double(bytes) / sn.median_s / 1e9 * bus);
    b.kv("name", "MPI_Allreduce (Open MPI, blocking)").stats(sm)
        .kv("algbw_GBps", double(bytes) / sm.median_s / 1e9)
        .kv("busbw_GBps", double(bytes) / sm.median_s / 1e9 * bus);
    bench::Json c;
    c.kv("name", "MPI_Iallreduce + MPI_Wait").stats(sb)
        .kv("busbw_GBps", double(bytes) / sb.median_s / 1e9 * bus);
    bench::Json j;
    j.kv("bench", "all_reduce_cpu").kv("config", cfg).kv("nuri", a).kv("peer", b)
        .kv("ratio", sm.median_s / sn.median_s).kv("nonblocking", c)
        .kv("ratio_nonblocking", sb.median_s / sn.median_s);
    if (comm.rank() == 0) out.emit(j);
  }
}

struct Run {
  std::unique_ptr<nuri::Transformer> model;
  std::unique_ptr<nuri::Trainer> trainer;
};

Run make_run(const Options& o, std::shared_ptr<nuri::Communicator> comm,
             std::shared_ptr<nuri::TokenFile> data, int stage, bool overlap) {
  nuri::ModelConfig cfg = nuri::model_preset(o.model);
  if (o.layers > 0) cfg.n_layer = o.layers;
  cfg.max_seq_len = std::max(cfg.max_seq_len, o.seq);
  Run r;
  r.model = std::make_unique<nuri::Transformer>(cfg, nuri::make_backend("cpu"), 1);
  nuri::TrainConfig tc;
  tc.steps = 1000000;
  tc.micro_batch = o.batch;
  tc.seq_len = o.seq;
  tc.eval_every = 0;
  nuri::ParallelConfig par;
  par.zero_stage = stage;
  par.overlap = overlap;
  par.bucket_bytes = int64_t(o.bucket_mb * 1048576.0);
  r.trainer = std::make_unique<nuri::Trainer>(*r.model, tc, data, nullptr, comm, par);
  return r;
}

void bench_dp_step(std::shared_ptr<nuri::Communicator> comm, const Options& o,
                   bench::Output& out) {
  std::vector<uint32_t> tokens(size_t(1) << 16);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = uint32_t((i * 7919 + i / 13) % 257);
  auto data = nuri::TokenFile::from_tokens(tokens, "bench", 257);
  const int n = comm->size();
  for (int stage : {0, 1, 2}) {
    Run on = make_run(o, comm, data, stage, true);
    Run off = make_run(o, comm, data, stage, false);
    for (int w = 0; w < 2; ++w) {  // warm-up: plans, pages, MPI connections
      on.trainer->step();
      off.trainer->step();
    }
    std::vector<double> t_on, t_off, reduce, exposed, hidden;
    nuri::CommStats last;
    for (int r = 0; r < o.reps; ++r) {
      comm->barrier();
      t_on.push_back(max_over_ranks(on.trainer->step().step_seconds));
      const nuri::CommStats s = on.trainer->data_parallel()->stats();
      // The rank that waited longest is where the step lost time.
      const double e = max_over_ranks(s.exposed_seconds), red = max_over_ranks(s.reduce_seconds);
      reduce.push_back(red);
      exposed.push_back(e);
      hidden.push_back(red > 0 ? std::max(0.0, 1.0 - e / red) : 0.0);
      last = s;
      comm->barrier();
      t_off.push_back(max_over_ranks(off.trainer->step().step_seconds));
    }
    const bench::Stats son = bench::summarize(t_on), soff = bench::summarize(t_off);
    const nuri::ModelConfig& mc = on.model->config();
    bench::Json cfg;
    cfg.kv("model", o.model).kv("layers", mc.n_layer).kv("params", mc.num_params())
        .kv("ranks", n).kv("zero", stage).kv("B", o.batch).kv("T", o.seq)
        .kv("bucket_bytes", int64_t(o.bucket_mb * 1048576.0))
        .kv("buckets", int64_t(on.trainer->data_parallel()->buckets().size()))
        .kv("threads", bench::bench_threads());
    bench::Json a, b;
    a.kv("name", "overlapped").stats(son)
        .kv("reduce_s", bench::summarize(reduce).median_s)
        .kv("exposed_s", bench::summarize(exposed).median_s)
        .kv("hidden_share", bench::summarize(hidden).median_s)
        .kv("hidden_share_min", bench::summarize(hidden).min_s)
        .kv("hidden_share_max", bench::summarize(hidden).max_s);
    b.kv("name", "reduced after the backward").stats(soff);
    bench::Json j;
    j.kv("bench", "dp_step_cpu").kv("config", cfg)
        .kv("bytes_per_step", last.payload_bytes).kv("bus_bytes_per_step", last.bus_bytes)
        .kv("collectives_per_step", last.collectives)
        .kv("nuri", a).kv("peer", b).kv("ratio", soff.median_s / son.median_s);
    if (comm->rank() == 0) out.emit(j);
  }
}

void bench_zero3_step(std::shared_ptr<nuri::Communicator> comm, const Options& o,
                      bench::Output& out) {
  std::vector<uint32_t> tokens(size_t(1) << 16);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = uint32_t((i * 7919 + i / 13) % 257);
  auto data = nuri::TokenFile::from_tokens(tokens, "bench", 257);
  const int n = comm->size();
  Run z2 = make_run(o, comm, data, 2, true);
  const int64_t mem2 = z2.model->memory().current_bytes;
  Run z3 = make_run(o, comm, data, 3, true);
  const int64_t mem3 = z3.model->memory().current_bytes;
  for (int w = 0; w < 2; ++w) {
    z2.trainer->step();
    z3.trainer->step();
  }
  std::vector<double> t2, t3, gathers, waited;
  nuri::CommStats last;
  for (int r = 0; r < o.reps; ++r) {
    comm->barrier();
    t2.push_back(max_over_ranks(z2.trainer->step().step_seconds));
    comm->barrier();
    t3.push_back(max_over_ranks(z3.trainer->step().step_seconds));
    const nuri::CommStats s = z3.trainer->data_parallel()->stats();
    gathers.push_back(max_over_ranks(s.gather_seconds));
    waited.push_back(max_over_ranks(s.gather_exposed_seconds));
    last = s;
  }
  const bench::Stats s2 = bench::summarize(t2), s3 = bench::summarize(t3);
  const double psi = double(z2.model->parameter_count());
  const double g = bench::summarize(gathers).median_s, e = bench::summarize(waited).median_s;
  bench::Json cfg;
  cfg.kv("model", o.model).kv("layers", z3.model->config().n_layer).kv("psi", int64_t(psi))
      .kv("ranks", n).kv("B", o.batch).kv("T", o.seq).kv("threads", bench::bench_threads());
  bench::Json a, b;
  // Per-rank bytes after setup: the model's allocator holds the weights, AdamW's state and the
  // gradient shard.
  a.kv("name", "zero3").stats(s3).kv("gather_s", g).kv("gather_waited_s", e)
      .kv("gather_hidden_share", g > 0 ? std::max(0.0, 1.0 - e / g) : 0.0)
      .kv("bytes_per_step", last.payload_bytes).kv("unit_gathers", last.unit_gathers)
      .kv("gathered_peak_bytes", last.gathered_peak_bytes)
      .kv("state_bytes", double(mem3)).kv("state_formula", 16 * psi / n);
  b.kv("name", "zero2").stats(s2).kv("state_bytes", double(mem2))
      .kv("state_formula", 4 * psi + 12 * psi / n);
  bench::Json j;
  j.kv("bench", "zero3_step_cpu").kv("config", cfg).kv("nuri", a).kv("peer", b)
      .kv("ratio", s3.median_s / s2.median_s);
  if (comm->rank() == 0) out.emit(j);
}

void bench_tp_step(std::shared_ptr<nuri::Communicator> comm, const Options& o,
                   bench::Output& out) {
  std::vector<uint32_t> tokens(size_t(1) << 16);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = uint32_t((i * 7919 + i / 13) % 257);
  auto data = nuri::TokenFile::from_tokens(tokens, "bench", 257);
  const int n = comm->size();
  nuri::ModelConfig cfg = nuri::model_preset(o.model);
  if (o.layers > 0) cfg.n_layer = o.layers;
  cfg.max_seq_len = std::max(cfg.max_seq_len, o.seq);
  struct TpRun {
    int tp;
    bool sp;
    nuri::GridGroups grid;
    std::unique_ptr<nuri::Transformer> model;
    std::unique_ptr<nuri::Trainer> trainer;
    std::vector<double> step, comm_s;
    nuri::TensorParallelStats last;
  };
  std::vector<TpRun> runs;
  for (int tp = 1; tp <= n; tp *= 2) {
    if (n % tp != 0) continue;
    try {
      nuri::check_tensor_parallel(cfg, tp);
    } catch (const nuri::Error&) {
      continue;  // this model cannot be split that way
    }
    for (const bool sp : {false, true}) {
      if (sp && tp == 1) continue;
      TpRun r;
      r.tp = tp;
      r.sp = sp;
      r.grid = nuri::make_grid_groups(comm, tp);
      r.model = std::make_unique<nuri::Transformer>(cfg, nuri::make_backend("cpu"), 1,
                                                    nuri::WeightShard{},
                                                    nuri::TensorParallelRank{r.grid.coord.tp, tp});
      nuri::TrainConfig tc;
      tc.steps = 1000000;
      tc.micro_batch = o.batch * tp;  // the same global batch on every grid
      tc.seq_len = o.seq;
      tc.eval_every = 0;
      nuri::ParallelConfig par;
      par.bucket_bytes = int64_t(o.bucket_mb * 1048576.0);
      par.tp = tp;
      par.sequence_parallel = sp;
      r.trainer = std::make_unique<nuri::Trainer>(*r.model, tc, data, nullptr, r.grid, par);
      runs.push_back(std::move(r));
    }
  }
  for (int w = 0; w < 2; ++w) {
    for (TpRun& r : runs) r.trainer->step();
  }
  for (int rep = 0; rep < o.reps; ++rep) {
    for (TpRun& r : runs) {
      comm->barrier();
      if (nuri::TensorParallel* h = r.trainer->tensor_parallel()) h->reset_stats();
      r.step.push_back(max_over_ranks(r.trainer->step().step_seconds));
      if (nuri::TensorParallel* h = r.trainer->tensor_parallel()) {
        r.last = h->stats();
        r.comm_s.push_back(max_over_ranks(r.last.seconds));
      }
    }
  }
  const bench::Stats base = bench::summarize(runs.front().step);
  for (const TpRun& r : runs) {
    const bench::Stats st = bench::summarize(r.step);
    const double c = r.comm_s.empty() ? 0.0 : bench::summarize(r.comm_s).median_s;
    bench::Json config;
    config.kv("model", o.model).kv("layers", cfg.n_layer).kv("ranks", n).kv("tp", r.tp)
        .kv("dp", n / r.tp).kv("sequence_parallel", r.sp).kv("B_global", o.batch * n)
        .kv("T", o.seq).kv("threads", bench::bench_threads());
    bench::Json a, b;
    a.kv("name", "tp" + std::to_string(r.tp) + (r.sp ? "+sp" : "")).stats(st)
        .kv("tp_comm_s", c).kv("tp_comm_share", st.median_s > 0 ? c / st.median_s : 0.0)
        .kv("all_reduce_calls", r.last.all_reduce_calls)
        .kv("all_reduce_bytes", r.last.all_reduce_bytes)
        .kv("reduce_scatter_bytes", r.last.reduce_scatter_bytes)
        .kv("all_gather_bytes", r.last.all_gather_bytes)
        .kv("params_per_rank", r.model->parameter_count());
    b.kv("name", "tp1").stats(base);
    bench::Json j;
    j.kv("bench", "tp_step_cpu").kv("config", config).kv("nuri", a).kv("peer", b)
        .kv("ratio", st.median_s / base.median_s);
    if (comm->rank() == 0) out.emit(j);
  }
}

void bench_pp_step(std::shared_ptr<nuri::Communicator> comm, const Options& o,
                   bench::Output& out) {
  const int n = comm->size();
  nuri::ModelConfig cfg = nuri::model_preset(o.model);
  if (o.layers > 0) cfg.n_layer = o.layers;
  cfg.max_seq_len = std::max(cfg.max_seq_len, o.seq);
  auto batch = [&](int64_t k) {  // micro-batch k of the global batch (the same every step)
    nuri::Pipeline::MicroBatch mb{nuri::Tensor::empty({o.batch, o.seq}, nuri::DType::i32),
                                  nuri::Tensor::empty({o.batch, o.seq}, nuri::DType::i32)};
    for (int64_t i = 0; i < o.batch * o.seq; ++i) {
      mb.tokens.data<int32_t>()[i] = int32_t((k * 7919 + i * 31) % 257);
      mb.targets.data<int32_t>()[i] = int32_t((k * 7919 + i * 31 + 1) % 257);
    }
    return mb;
  };
  struct PpRun {
    int pp, dp;
    std::shared_ptr<nuri::Communicator> pipe_comm, dp_comm;
    std::unique_ptr<nuri::Transformer> model;
    std::unique_ptr<nuri::AdamW> opt;
    std::unique_ptr<nuri::Pipeline> pipe;
    std::vector<nuri::Pipeline::MicroBatch> mine;
    std::vector<double> step, bubble;
  };
  std::vector<PpRun> runs;
  for (int pp = 1; pp <= n; pp *= 2) {
    const int dp = n / pp;
    if (n % pp != 0 || pp > cfg.n_layer || o.micro % dp != 0) continue;
    PpRun r;
    r.pp = pp;
    r.dp = dp;
    const int rank = comm->rank(), stage = rank % pp, d = rank / pp;
    std::vector<int> pipe_ranks, dp_ranks;
    for (int s = 0; s < pp; ++s) pipe_ranks.push_back(d * pp + s);
    for (int e = 0; e < dp; ++e) dp_ranks.push_back(e * pp + stage);
    if (pp > 1) r.pipe_comm = comm->split(pipe_ranks);
    if (dp > 1) r.dp_comm = comm->split(dp_ranks);
    const std::vector<int64_t> first = nuri::pipeline_stages(cfg, pp, o.seq);
    r.model = std::make_unique<nuri::Transformer>(
        cfg, nuri::make_backend("cpu"), 1, nuri::WeightShard{}, nuri::TensorParallelRank{},
        nuri::PipelineStage{first[size_t(stage)], first[size_t(stage) + 1]});
    r.opt = std::make_unique<nuri::AdamW>(*r.model, nuri::AdamWParams{});
    r.pipe = std::make_unique<nuri::Pipeline>(std::vector<nuri::Transformer*>{r.model.get()},
                                              r.pipe_comm);
    for (int64_t k = d; k < o.micro; k += dp) r.mine.push_back(batch(k));
    runs.push_back(std::move(r));
  }
  auto one_step = [&](PpRun& r) {
    const auto t0 = std::chrono::steady_clock::now();
    r.model->zero_grad();
    r.pipe->record_timeline(true);
    r.pipe->step(r.mine, 1.f / float(o.micro));
    r.pipe->sum_tied_gradients();
    if (r.dp_comm) r.dp_comm->all_reduce(r.model->grad_buffer());
    r.opt->step(1e-4f);
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  for (int w = 0; w < 2; ++w) {
    for (PpRun& r : runs) one_step(r);
  }
  for (int rep = 0; rep < o.reps; ++rep) {
    for (PpRun& r : runs) {
      comm->barrier();
      r.step.push_back(max_over_ranks(one_step(r)));
      double b = r.pipe->measured_bubble(), sum = 0;
      MPI_Allreduce(&b, &sum, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
      r.bubble.push_back(sum / n);
    }
  }
  const bench::Stats base = bench::summarize(runs.front().step);
  for (const PpRun& r : runs) {
    const bench::Stats st = bench::summarize(r.step);
    const int64_t m = o.micro / r.dp;
    bench::Json config;
    config.kv("model", o.model).kv("layers", cfg.n_layer).kv("ranks", n).kv("pp", r.pp)
        .kv("dp", r.dp).kv("micro_batches_per_pipeline", m).kv("B", o.batch).kv("T", o.seq)
        .kv("threads", bench::bench_threads());
    bench::Json a, b;
    a.kv("name", "pp" + std::to_string(r.pp)).stats(st)
        .kv("bubble", bench::summarize(r.bubble).median_s)
        .kv("bubble_formula", nuri::pipeline_bubble_formula(r.pp, int(m)))
        .kv("params_per_rank", r.model->parameter_count());
    b.kv("name", "pp1").stats(base);
    bench::Json j;
    j.kv("bench", "pp_step_cpu").kv("config", config).kv("nuri", a).kv("peer", b)
        .kv("ratio", st.median_s / base.median_s);
    if (comm->rank() == 0) out.emit(j);
  }
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Options o = parse(argc, argv);
    const nuri::LaunchInfo info = nuri::detect_launch();
    std::shared_ptr<nuri::Communicator> comm = nuri::make_communicator(info);
    if (comm->backend_name() != "mpi") {
      std::fprintf(stderr, "bench_comm measures MPI ranks: start it with mpirun -np N (N >= 2)\n");
      return 2;
    }
    bench::Output out(comm->rank() == 0 ? o.json : "");
    auto want = [&](const char* name) { return o.only.empty() || o.only == name; };
    if (want("all_reduce")) bench_all_reduce(*comm, o, out);
    if (want("dp_step")) bench_dp_step(comm, o, out);
    if (want("zero3_step")) bench_zero3_step(comm, o, out);
    if (want("tp_step")) bench_tp_step(comm, o, out);
    if (want("pp_step")) bench_pp_step(comm, o, out);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_comm: %s\n", e.what());
    return 1;
  }
  return 0;
}
