// Which BLAS should the CPU backend use? OpenBLAS cblas_sgemm against Eigen 3 (row-major maps,
// noalias products, OpenMP threads), measured in one run, alternating A B A B after a warm-up,
// at the 2048³ ceiling shape and at GPT-2 small training shapes (B=4, T=64 and T=256):
//   forward  y  = x · Wᵀ    (NT)  for c_attn (QKV), attn c_proj, mlp c_fc, mlp c_proj, lm_head
//   dgrad    dx = dy · W    (NN)  for mlp c_fc
//   wgrad    dW = dyᵀ · x   (TN)  for mlp c_fc
// GFLOP/s = 2·M·N·K / t. Prints one JSON object per shape, then {"bench": "sgemm_choice", ...}.
//
//   bench_blas [--quick] [--reps N] [--filter SUBSTR] [--json FILE]        threads: OMP_NUM_THREADS (default all)
#include <cblas.h>

#include <Eigen/Core>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "bench_common.h"

namespace {

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using CMap = Eigen::Map<const RowMat>;
using MMap = Eigen::Map<RowMat>;

struct GemmShape {
  std::string name;    // e.g. "fc.fwd"
  int64_t tokens;      // B·T it comes from (0 for the square ceiling shape)
  int64_t M, N, K;     // C[M, N] = op(A) · op(B), reduction over K
  std::string layout;  // "NN": A[M,K]·B[K,N]; "NT": A[M,K]·B[N,K]ᵀ; "TN": A[K,M]ᵀ·B[K,N]
};

struct Problem {
  GemmShape s;
  std::vector<float> a, b, c_blas, c_eigen;

  void run_openblas() {
    const bool ta = s.layout == "TN", tb = s.layout == "NT";
    const int lda = ta ? int(s.M) : int(s.K);
    const int ldb = tb ? int(s.K) : int(s.N);
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                int(s.M), int(s.N), int(s.K), 1.f, a.data(), lda, b.data(), ldb, 0.f,
                c_blas.data(), int(s.N));
  }
  void run_eigen() {
    MMap C(c_eigen.data(), s.M, s.N);
    if (s.layout == "NN") {
      C.noalias() = CMap(a.data(), s.M, s.K) * CMap(b.data(), s.K, s.N);
    } else if (s.layout == "NT") {
      C.noalias() = CMap(a.data(), s.M, s.K) * CMap(b.data(), s.N, s.K).transpose();
    } else {  // TN
      C.noalias() = CMap(a.data(), s.K, s.M).transpose() * CMap(b.data(), s.K, s.N);
    }
  }
  /// max |c_blas - c_eigen| / max |c_eigen|  (normwise: elementwise relative error is
  /// meaningless where a sum of random signs lands near 0).
  double max_rel_diff() const {
    double md = 0, mref = 0;
    for (size_t i = 0; i < c_blas.size(); ++i) {
      md = std::max(md, double(std::fabs(c_blas[i] - c_eigen[i])));
      mref = std::max(mref, double(std::fabs(c_eigen[i])));
    }
    return mref > 0 ? md / mref : md;
  }
};

void fill_uniform(std::vector<float>& v, std::mt19937& g) {
  std::uniform_real_distribution<float> d(-1.f, 1.f);
  for (float& x : v) {
    x = d(g);
    if (x == 0.f) x = 0.5f;  // non-zero data
  }
}

std::vector<GemmShape> shapes(bool quick) {
  std::vector<GemmShape> v;
  if (quick)
    v.push_back({"square1024", 0, 1024, 1024, 1024, "NN"});
  else
    v.push_back({"square2048", 0, 2048, 2048, 2048, "NN"});
  const int64_t d = 768, ff = 4 * d, vocab_padded = 50304;  // GPT-2 small
  std::vector<int64_t> token_counts = quick ? std::vector<int64_t>{256}
                                            : std::vector<int64_t>{256, 1024};
  for (int64_t m : token_counts) {
    v.push_back({"c_attn.fwd", m, m, 3 * d, d, "NT"});
    v.push_back({"attn.c_proj.fwd", m, m, d, d, "NT"});
    v.push_back({"c_fc.fwd", m, m, ff, d, "NT"});
    v.push_back({"mlp.c_proj.fwd", m, m, d, ff, "NT"});
    if (!quick) v.push_back({"lm_head.fwd", m, m, vocab_padded, d, "NT"});
    v.push_back({"c_fc.dgrad", m, m, d, ff, "NN"});   // dx[m, d]   = dy[m, ff] · W[ff, d]
    v.push_back({"c_fc.wgrad", m, ff, d, m, "TN"});   // dW[ff, d]  = dy[m, ff]ᵀ · x[m, d]
  }
  return v;
}

void usage() {
  std::fprintf(stderr,
               "usage: bench_blas [--quick] [--reps N] [--min-sample-s S] [--filter SUBSTR] [--json FILE]\n"
               "threads: OMP_NUM_THREADS (default: all cores), used by both libraries\n");
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  int reps = -1;
  double min_sample_s = -1;
  std::string json_path, filter;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--quick") {
      quick = true;
    } else if (a == "--reps" && i + 1 < argc) {
      reps = std::atoi(argv[++i]);
    } else if (a == "--min-sample-s" && i + 1 < argc) {
      min_sample_s = std::atof(argv[++i]);
    } else if (a == "--filter" && i + 1 < argc) {
      filter = argv[++i];
    } else if (a == "--json" && i + 1 < argc) {
      json_path = argv[++i];
    } else {
      usage();
      return a == "--help" || a == "-h" ? 0 : 2;
    }
  }
  if (reps <= 0) reps = quick ? 3 : 7;
  if (min_sample_s < 0) min_sample_s = quick ? 0.02 : 0.1;

  const int threads = bench::bench_threads();
  openblas_set_num_threads(threads);
  Eigen::setNbThreads(threads);

  bench::Output out(json_path);
  std::mt19937 gen(1234);
  std::vector<double> ratios, ratios_training;
  double ceil_blas = 0, ceil_eigen = 0;
  bool all_ok = true;

  for (const GemmShape& s : shapes(quick)) {
    if (!filter.empty() && s.name.find(filter) == std::string::npos) continue;
    Problem p;
    p.s = s;
    p.a.resize(size_t(s.M * s.K));
    p.b.resize(size_t(s.K * s.N));
    p.c_blas.assign(size_t(s.M * s.N), 0.f);
    p.c_eigen.assign(size_t(s.M * s.N), 0.f);
    fill_uniform(p.a, gen);
    fill_uniform(p.b, gen);

    // Correctness once per shape; these calls are also the first warm-up.
    p.run_openblas();
    p.run_eigen();
    const double diff = p.max_rel_diff();
    const bool ok = diff < 1e-4;
    all_ok = all_ok && ok;

    // Warm-up (one more call each), then size a sample so it lasts >= min_sample_s.
    double t_blas = bench::time_per_call([&] { p.run_openblas(); }, 1);
    double t_eigen = bench::time_per_call([&] { p.run_eigen(); }, 1);
    const int iters = bench::iters_for(std::min(t_blas, t_eigen), min_sample_s);

    std::vector<double> sb, se;  // A B A B ...
    for (int r = 0; r < reps; ++r) {
      sb.push_back(bench::time_per_call([&] { p.run_openblas(); }, iters));
      se.push_back(bench::time_per_call([&] { p.run_eigen(); }, iters));
    }
    const bench::Stats b = bench::summarize(sb), e = bench::summarize(se);
    const double flop = 2.0 * double(s.M) * double(s.N) * double(s.K);
    const double gb = flop / b.median_s * 1e-9, ge = flop / e.median_s * 1e-9;
    const double ratio = gb / ge;
    ratios.push_back(ratio);
    if (s.tokens > 0)
      ratios_training.push_back(ratio);
    else
      ceil_blas = gb, ceil_eigen = ge;

    bench::Json cfg;
    cfg.kv("shape", s.name);
    if (s.tokens > 0) cfg.kv("B", int64_t(4)).kv("T", s.tokens / 4).kv("tokens", s.tokens);
    cfg.kv("M", s.M).kv("N", s.N).kv("K", s.K).kv("layout", s.layout).kv("threads", threads);
    cfg.kv("reps", reps).kv("calls_per_sample", iters);
    bench::Json jb, je;
    jb.stats(b).kv("gflops", gb);
    je.stats(e).kv("gflops", ge);
    bench::Json row;
    row.kv("bench", "sgemm_cpu").kv("config", cfg).kv("openblas", jb).kv("eigen", je);
    row.kv("ratio", ratio).kv("max_rel_diff", diff).kv("check", ok ? "pass" : "FAIL");
    out.emit(row);
  }

  const double gm = bench::geomean(ratios);
  bench::Json sum;
  sum.kv("bench", "sgemm_choice");
  sum.kv("config", bench::Json()
                       .kv("threads", threads)
                       .kv("openblas_threads", openblas_get_num_threads())
                       .kv("eigen_threads", Eigen::nbThreads())
                       .kv("shapes", int64_t(ratios.size()))
                       .kv("quick", quick)
                       .kv("openblas_config", std::string(openblas_get_config()))
                       .kv("openblas_core", std::string(openblas_get_corename()))
                       .kv("eigen_version", std::to_string(EIGEN_WORLD_VERSION) + "." +
                                                std::to_string(EIGEN_MAJOR_VERSION) + "." +
                                                std::to_string(EIGEN_MINOR_VERSION)));
  sum.kv("winner", gm >= 1.0 ? "openblas" : "eigen");
  sum.kv("geomean_ratio", gm);
  sum.kv("geomean_ratio_training_shapes", bench::geomean(ratios_training));
  sum.kv("ceiling_gflops", bench::Json().kv("openblas", ceil_blas).kv("eigen", ceil_eigen));
  sum.kv("ratio_definition", "openblas_gflops / eigen_gflops, geometric mean over all shapes");
  sum.kv("check", all_ok ? "pass" : "FAIL");
  out.emit(sum);
  return all_ok ? 0 : 1;
}
