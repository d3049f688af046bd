// The collectives of data-parallel training on GPU ranks (issue #9): nuri's NCCL communicator
// against raw NCCL on the same ranks and the same stream, reported as nccl-tests reports them.
// bench_comm is the CPU ranks' side.
//
// For all_reduce (f32: gradient buckets), reduce_scatter (f32: ZeRO 2's buckets) and all_gather
// (bf16: the compute copy ZeRO 1 and 2 gather), at sizes from --min-bytes to --max-bytes (x4):
//   nuri       Communicator::all_reduce / reduce_scatter / all_gather on device tensors; each call
//              returns once the collective has completed (it polls the stream for the timeout)
//   peer       ncclAllReduce / ncclReduceScatter / ncclAllGather on a communicator of the
//              benchmark's own over the same ranks, each call followed by a stream synchronize:
//              the same contract as nuri's call
//   pipelined  the same NCCL calls back to back and one synchronize at the end, which is how
//              nccl-tests' all_reduce_perf times them: compare its figures with this column
// Each is timed as the slowest rank's time per call. size is the whole buffer (all_reduce's
// tensor, reduce_scatter's input, all_gather's output), algbw = size / time, and busbw = algbw x
// 2(n-1)/n (all_reduce) or (n-1)/n (reduce_scatter, all_gather): nccl-tests' definitions. Every
// operation's result is checked once per size, on every rank, against the exact answer (small
// integers, exact in f32 and bf16) before it is timed.
//
// --tp measures tensor parallelism's messages instead (issue #22): all_reduce, reduce_scatter
// and all_gather in bf16 of one micro-batch's activations, tokens × d_model × 2 bytes (the
// whole buffer; sequence parallelism's all_gather output and reduce_scatter input), for d_model
// 768 (GPT-2 124M), 2048 (Llama 1B) and 4096 (Llama 3 8B) at 4096 and 16384 tokens.
//
//   srun --mpi=pmix --ntasks-per-node=8 --gpus-per-node=8 build/benchmarks/bench_comm_gpu
//        [--quick] [--tp] [--reps N] [--min-bytes B] [--max-bytes B] [--backend cuda|cuda-emu]
//        [--json FILE]
// (or mpirun, or a torchrun-style start). Rank 0 prints one JSON object per op and size. Exits
// 77 when this process sees no CUDA device (ctest then reports Skipped).
#include <nccl.h>

#include <memory>
#include <string>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "bench_common.h"
#include "dist/nccl_bootstrap.h"
#include "nuri/backend/backend.h"
#include "nuri/core/error.h"
#include "nuri/dist/communicator.h"
#include "nuri/dist/launch.h"

namespace {

using nuri::DType;
using nuri::Tensor;

struct Options {
  bool quick = false, tp = false;
  int reps = 7;
  int64_t min_bytes = 1024, max_bytes = int64_t(256) << 20;
  std::string backend = "cuda";
  std::string json;
};

Options parse(int argc, char** argv) {
  Options o;
  bool max_given = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "bench_comm_gpu: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--quick") o.quick = true;
    else if (a == "--tp") o.tp = true;
    else if (a == "--reps") o.reps = std::stoi(value());
    else if (a == "--min-bytes") o.min_bytes = std::stoll(value());
    else if (a == "--max-bytes") o.max_bytes = std::stoll(value()), max_given = true;
    else if (a == "--backend") o.backend = value();
    else if (a == "--json") o.json = value();
    else {
      std::fprintf(stderr, "bench_comm_gpu: unknown option %s (see the header of "
                   "bench_comm_gpu.cpp)\n", a.c_str());
      std::exit(2);
    }
  }
  if (o.quick) {
    o.reps = std::min(o.reps, 3);
    if (!max_given) o.max_bytes = int64_t(64) << 10;
  }
  if (o.min_bytes < 64 || o.max_bytes < o.min_bytes || o.reps < 1) {
    std::fprintf(stderr, "bench_comm_gpu: need 64 <= --min-bytes <= --max-bytes and --reps >= 1\n");
    std::exit(2);
  }
  return o;
}

enum class Op { all_reduce, reduce_scatter, all_gather };

struct OpInfo {
  const char* name;
  const char* nccl_name;
  DType dtype;
};

/// nccl-tests' bus bandwidth factor: 2(n-1)/n for all_reduce, (n-1)/n for the other two.
double bus_factor(Op op, int n) {
  return op == Op::all_reduce ? 2.0 * (n - 1) / n : double(n - 1) / n;
}

OpInfo info_of(Op op) {
  switch (op) {
    case Op::all_reduce: return {"all_reduce", "ncclAllReduce", DType::f32};
    case Op::reduce_scatter: return {"reduce_scatter", "ncclReduceScatter", DType::f32};
    case Op::all_gather: return {"all_gather", "ncclAllGather", DType::bf16};
  }
  return {"?", "?", DType::f32};
}

/// Rank r's input element i: small integers, so every sum is exact in f32 (and every gathered
/// value in bf16).
float input_value(int rank, int64_t i) { return float((rank % 8 + 1) * int(i % 7)); }

class Bench {
 public:
  Bench(const Options& o, std::shared_ptr<nuri::Communicator> host,
        std::unique_ptr<nuri::Backend> backend)
      : o_(o), host_(std::move(host)), backend_(std::move(backend)),
        n_(host_->size()), rank_(host_->rank()) {
    nuri_ = nuri::make_device_communicator(host_, *backend_);
    const ncclResult_t r = nuri::nccl_init_over(host_, &peer_);
    NURI_CHECK(r == ncclSuccess, "the peer's ncclCommInitRank failed: ", ncclGetErrorString(r));
    stream_ = dynamic_cast<nuri::CudaBackend&>(*backend_).stream();
  }
  ~Bench() {
    if (peer_) ncclCommDestroy(peer_);
  }

  void run(bench::Output& out) {
    if (o_.tp) {  // tensor parallelism's activations: tokens x d_model, bf16
      const std::vector<int64_t> tokens =
          o_.quick ? std::vector<int64_t>{64} : std::vector<int64_t>{4096, 16384};
      for (Op op : {Op::all_reduce, Op::reduce_scatter, Op::all_gather}) {
        for (int64_t d : {768, 2048, 4096}) {
          for (int64_t t : tokens) {
            const std::string why = "tp activations: " + std::to_string(t) + " tokens x d_model " +
                                    std::to_string(d);
            measure(op, t * d * 2, out, DType::bf16, why);
          }
        }
      }
      return;
    }
    for (Op op : {Op::all_reduce, Op::reduce_scatter, Op::all_gather}) {
      for (int64_t bytes = o_.min_bytes; bytes <= o_.max_bytes; bytes *= 4) {
        measure(op, bytes, out, info_of(op).dtype, "");
      }
    }
  }

 private:
  /// The slowest rank's value (a collective ends when its last rank does).
  double max_over_ranks(double v) {
    Tensor mine = Tensor::empty({1}, DType::f32), all = Tensor::empty({n_}, DType::f32);
    mine.data<float>()[0] = float(v);
    host_->all_gather(mine, all);
    double m = 0;
    for (int r = 0; r < n_; ++r) m = std::max(m, double(all.data<float>()[r]));
    return m;
  }

  void measure(Op op, int64_t bytes, bench::Output& out, DType dtype, const std::string& why) {
    OpInfo info = info_of(op);
    info.dtype = dtype;
    const int64_t esize = int64_t(nuri::dtype_size(info.dtype));
    // size is the whole buffer; each rank's part of it is size / n (rounded down to elements).
    const int64_t part = std::max<int64_t>(1, bytes / esize / n_);
    const int64_t whole = part * n_;
    const int64_t count = op == Op::all_reduce ? whole : part;  // NCCL's count argument
    const int64_t in_n = op == Op::all_gather ? part : whole;
    const int64_t out_n = op == Op::reduce_scatter ? part : whole;
    Tensor in = backend_->empty({in_n}, info.dtype);
    Tensor res = op == Op::all_reduce ? in : backend_->empty({out_n}, info.dtype);
    const ncclDataType_t nt = info.dtype == DType::f32 ? ncclFloat32 : ncclBfloat16;
    auto fill = [&] {  // all_reduce works in place, so its input is refilled before a check
      Tensor h = Tensor::empty({in_n}, info.dtype);
      for (int64_t i = 0; i < in_n; ++i) {
        const float v = input_value(rank_, i);
        if (info.dtype == DType::f32) h.data<float>()[i] = v;
        else h.data<nuri::bf16_t>()[i] = nuri::f32_to_bf16(v);
      }
      backend_->copy(h, in);
      backend_->synchronize();
    };
    auto call_nuri = [&] {
      if (op == Op::all_reduce) nuri_->all_reduce(in, nuri::ReduceOp::sum);
      else if (op == Op::reduce_scatter) nuri_->reduce_scatter(in, res, nuri::ReduceOp::sum);
      else nuri_->all_gather(in, res);
    };
    auto call_peer = [&] {
      ncclResult_t r = ncclSuccess;
      if (op == Op::all_reduce) {
        r = ncclAllReduce(in.raw(), in.raw(), size_t(count), nt, ncclSum, peer_, stream_);
      } else if (op == Op::reduce_scatter) {
        r = ncclReduceScatter(in.raw(), res.raw(), size_t(count), nt, ncclSum, peer_, stream_);
      } else {
        r = ncclAllGather(in.raw(), res.raw(), size_t(count), nt, peer_, stream_);
      }
      NURI_CHECK(r == ncclSuccess, info.nccl_name, " failed: ", ncclGetErrorString(r), " (",
                 ncclGetLastError(peer_), ")");
    };
    auto peer_sync = [&] {
      call_peer();
      backend_->synchronize();
    };
    // Correctness first, on every rank: nuri's answer, then the peer's.
    fill();
    call_nuri();
    check(op, info, res, part, "nuri");
    fill();
    peer_sync();
    check(op, info, res, part, info.nccl_name);

    // Calls per sample so that a sample lasts ~20 ms (5 ms with --quick); rank 0's count.
    host_->barrier();
    const double one = max_over_ranks(bench::time_per_call(peer_sync, 2));
    Tensor iters_t = Tensor::empty({1}, DType::f32);
    iters_t.data<float>()[0] = float(bench::iters_for(one, o_.quick ? 0.005 : 0.02));
    host_->broadcast(iters_t, 0);
    const int iters = int(iters_t.data<float>()[0]);
    std::vector<double> tn, tp, tq;
    for (int r = 0; r < o_.reps; ++r) {
      host_->barrier();
      tn.push_back(max_over_ranks(bench::time_per_call(call_nuri, iters)));
      host_->barrier();
      tp.push_back(max_over_ranks(bench::time_per_call(peer_sync, iters)));
      host_->barrier();
      const double t0 = bench::now_s();
      for (int k = 0; k < iters; ++k) call_peer();
      backend_->synchronize();
      tq.push_back(max_over_ranks((bench::now_s() - t0) / iters));
    }
    const bench::Stats sn = bench::summarize(tn), sp = bench::summarize(tp);
    const bench::Stats sq = bench::summarize(tq);
    const double size = double(whole * esize), bus = bus_factor(op, n_);
    auto figures = [&](bench::Json& j, const bench::Stats& s) {
      j.stats(s).kv("time_us", s.median_s * 1e6).kv("algbw_GBps", size / s.median_s / 1e9)
          .kv("busbw_GBps", size / s.median_s / 1e9 * bus);
    };
    int nccl_version = 0;
    ncclGetVersion(&nccl_version);
    bench::Json cfg;
    cfg.kv("op", info.name).kv("dtype", nuri::dtype_name(info.dtype)).kv("size_bytes", size)
        .kv("count", count).kv("ranks", n_).kv("backend", backend_->name())
        .kv("nccl_version", nccl_version).kv("iters", iters);
    if (!why.empty()) cfg.kv("purpose", why);
    bench::Json a, b, c;
    a.kv("name", std::string("nuri ") + info.name);
    figures(a, sn);
    b.kv("name", std::string(info.nccl_name) + " + synchronize");
    figures(b, sp);
    c.kv("name", std::string(info.nccl_name) + " back to back (nccl-tests' timing)");
    figures(c, sq);
    bench::Json j;
    j.kv("bench", "collective_gpu").kv("config", cfg).kv("nuri", a).kv("peer", b)
        .kv("ratio", sp.median_s / sn.median_s).kv("pipelined", c)
        .kv("ratio_pipelined", sq.median_s / sn.median_s);
    if (rank_ == 0) out.emit(j);
  }

  /// The result against the exact answer, element by element, on this rank.
  void check(Op op, const OpInfo& info, const Tensor& res, int64_t part, const char* who) {
    Tensor h = Tensor::empty(res.shape(), info.dtype);
    backend_->copy(res, h);
    int64_t sum_of_factors = 0;  // Σ_r (r % 8 + 1)
    for (int r = 0; r < n_; ++r) sum_of_factors += r % 8 + 1;
    for (int64_t i = 0; i < h.numel(); ++i) {
      double want = 0;
      if (op == Op::all_reduce) {
        want = double(sum_of_factors) * double(i % 7);
      } else if (op == Op::reduce_scatter) {  // this rank's part of the sum
        want = double(sum_of_factors) * double((rank_ * part + i) % 7);
      } else {  // every rank's part, in rank order
        want = double(input_value(int(i / part), i % part));
      }
      const double got = info.dtype == DType::f32 ? double(h.data<float>()[i])
                                                  : double(nuri::bf16_to_f32(h.data<nuri::bf16_t>()[i]));
      NURI_CHECK(got == want, who, " ", info.name, " of ", part * n_, " elements on rank ",
                 rank_, ": element ", i, " is ", got, ", not ", want);
    }
  }

  Options o_;
  std::shared_ptr<nuri::Communicator> host_;
  std::unique_ptr<nuri::Backend> backend_;
  std::shared_ptr<nuri::Communicator> nuri_;
  ncclComm_t peer_ = nullptr;
  cudaStream_t stream_ = nullptr;
  int n_ = 1, rank_ = 0;
};

}  // namespace

int main(int argc, char** argv) {
  try {
    const Options o = parse(argc, argv);
    const nuri::LaunchInfo info = nuri::detect_launch();
    if (o.backend == "cuda" && nuri::cuda_devices().empty()) {
      std::fprintf(stderr, "bench_comm_gpu: no CUDA device here; skipped\n");
      return 77;
    }
    std::shared_ptr<nuri::Communicator> host = nuri::make_communicator(info);
    auto backend = nuri::make_backend(nuri::backend_for_rank(o.backend, info));
    NURI_CHECK(!backend->device().is_cpu(), "bench_comm_gpu measures GPU ranks; --backend ",
               o.backend, " is not a CUDA backend");
    bench::Output out(host->rank() == 0 ? o.json : "");
    Bench(o, host, std::move(backend)).run(out);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_comm_gpu: %s\n", e.what());
    return 1;
  }
  return 0;
}
