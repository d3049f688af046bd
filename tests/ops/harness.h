// The op test harness: every op runs on every backend built, on random non-zero inputs, against
// a float64 reference; every backward is checked against finite differences of that reference.
//
// Gradient checks use the scalar L = Σ_o <w_o, out_o> with random weights w_o (the "dout" given
// to the backward). The backend's gradients are compared with central differences of L in
// float64: element by element on tiny shapes, and along random directions u (dL/du against
// <grad, u>) on the larger ones, where a per-element sweep would cost too much.
#pragma once

#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "nuri/backend/backend.h"
#include "nuri/core/rng.h"
#include "test_util.h"

namespace nuri::test {

using Vec = std::vector<double>;

/// Backends this op-test executable runs on. tests/CMakeLists.txt builds the one set of sources
/// per backend group: test_ops (cpu, label ops), test_ops in an emulated tree (cuda-emu, label
/// emu) and test_ops_gpu (cuda, label gpu), each with NURI_TEST_BACKEND naming its backend.
inline std::vector<std::string> backends() {
#if defined(NURI_TEST_BACKEND)
  return {NURI_TEST_BACKEND};
#else
  return available_backends();
#endif
}

/// A backend made while the environment variable `var` is `value` (restored after: the CUDA
/// backend reads NURI_GEMM, NURI_ATTENTION and the like when it is created), or the error that
/// creating it gave.
inline std::pair<std::unique_ptr<Backend>, std::string> make_backend_with(const std::string& name,
                                                                         const char* var,
                                                                         const char* value) {
  ScopedEnv env(var, value);
  std::pair<std::unique_ptr<Backend>, std::string> r;
  try {
    r.first = make_backend(name);
  } catch (const Error& e) {
    r.second = e.what();
  }
  return r;
}

/// Threads the CPU backend may use (at least 2, so thread-count tests compare 1 against many).
inline int max_threads() { return std::max(2, omp_get_num_procs()); }

/// Sets the OpenMP thread count for a scope (the CPU backend and its BLAS follow it).
class ThreadCount {
 public:
  explicit ThreadCount(int n) : saved_(omp_get_max_threads()) { omp_set_num_threads(n); }
  ~ThreadCount() { omp_set_num_threads(saved_); }

 private:
  int saved_;
};

/// Storage dtype of activations and compute weights on a backend: f32 on the CPU, bf16 on the
/// CUDA backends (their precision recipe; see csrc/backend/cuda/cuda_backend.h).
inline DType act_dtype(const std::string& backend) {
  return backend == "cpu" ? DType::f32 : DType::bf16;
}
inline DType act_dtype(const Backend& be) { return act_dtype(be.name()); }

/// bf16 keeps 8 significant bits (7 stored): values in [1, 2) are 2^-7 apart, so one rounding
/// moves a value by at most 2^-8 of itself.
constexpr double kBf16Eps = 1.0 / 128;  // 2^-7, the spacing of bf16 values in [1, 2)
/// f16 keeps 11 significant bits: 2^-10 apart in [1, 2).
constexpr double kF16Eps = 1.0 / 1024;

/// The tolerance of a comparison against the float64 reference: `f32_tol` on f32 backends; on
/// bf16 backends, the larger of that and `bf16_roundings` x 2^-7. Each op states how many bf16
/// roundings its result passes through (inputs rounded before the reference sees them do not
/// count: the reference gets the rounded values too). The compare() error is normalized by
/// max |ref|, so one rounding contributes at most 2^-8 and the 2^-7 per rounding is a factor
/// of two above bf16's own error. f16 results count the same roundings at f16's spacing.
inline double tolerance_for(DType dt, double f32_tol, double bf16_roundings) {
  if (dt == DType::bf16) return std::max(f32_tol, bf16_roundings * kBf16Eps);
  if (dt == DType::f16) return std::max(f32_tol, bf16_roundings * kF16Eps);
  return f32_tol;
}
inline double tolerance(const Backend& be, double f32_tol, double bf16_roundings) {
  return tolerance_for(act_dtype(be), f32_tol, bf16_roundings);
}

/// One run of a suite that also varies the activation dtype: every backend runs its own
/// (act_dtype), and backends on bf16 also run f32, where their sums must be as good as the CPU's.
struct DtypeRun {
  std::string backend;
  DType dtype;
};
inline void PrintTo(const DtypeRun& r, std::ostream* os) {
  *os << r.backend << " " << dtype_name(r.dtype);
}
inline std::vector<DtypeRun> dtype_runs() {
  std::vector<DtypeRun> r;
  for (const auto& name : backends()) {
    r.push_back({name, act_dtype(name)});
    if (act_dtype(name) != DType::f32) r.push_back({name, DType::f32});
  }
  return r;
}

/// Random N(0, scale²) values from a seed, already rounded to float (so the float64 reference
/// sees exactly what an f32 backend sees).
inline Vec random_vec(int64_t n, uint64_t seed, double scale = 1.0) {
  Philox rng(seed, 0x7e57);
  Vec v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[size_t(i)] = double(float(rng.normal(uint64_t(i)) * scale));
  return v;
}

/// v rounded to a dtype's precision (f32, bf16 or f16), so a reference computed from the result sees
/// exactly the inputs the backend sees.
inline double rounded(double x, DType dt) {
  if (dt == DType::bf16) return double(bf16_to_f32(f32_to_bf16(float(x))));
  if (dt == DType::f16) return double(f16_to_f32(f32_to_f16(float(x))));
  return double(float(x));
}
inline Vec rounded(Vec v, DType dt) {
  for (double& x : v) x = rounded(x, dt);
  return v;
}
/// v rounded to the backend's activation dtype.
inline Vec act(const Backend& be, Vec v) { return rounded(std::move(v), act_dtype(be)); }

/// A CPU f32 tensor holding v (rounded to float).
inline Tensor host_tensor(const Shape& shape, const Vec& v) {
  Tensor t = Tensor::empty(shape, DType::f32);
  EXPECT_EQ(int64_t(v.size()), t.numel());
  float* p = t.data<float>();
  for (size_t i = 0; i < v.size(); ++i) p[i] = float(v[i]);
  return t;
}

/// A tensor of dtype dt (f32, bf16 or f16) on the backend's device with the values of v (rounded).
inline Tensor on_dtype(Backend& be, const Shape& shape, const Vec& v, DType dt) {
  Tensor h = host_tensor(shape, v);
  if (dt == DType::bf16) {
    Tensor hb = Tensor::empty(shape, DType::bf16);
    const float* src = h.data<float>();
    bf16_t* dst = hb.data<bf16_t>();
    for (int64_t i = 0; i < h.numel(); ++i) dst[i] = f32_to_bf16(src[i]);
    h = hb;
  } else if (dt == DType::f16) {
    Tensor hh = Tensor::empty(shape, DType::f16);
    const float* src = h.data<float>();
    f16_t* dst = hh.data<f16_t>();
    for (int64_t i = 0; i < h.numel(); ++i) dst[i] = f32_to_f16(src[i]);
    h = hh;
  }
  if (be.device().is_cpu()) return h;
  Tensor d = be.empty(shape, dt);
  be.copy(h, d);
  return d;
}
/// An activation (the backend's activation dtype) with the values of v.
inline Tensor on(Backend& be, const Shape& shape, const Vec& v) {
  return on_dtype(be, shape, v, act_dtype(be));
}
/// An f32 tensor (statistics, master weights, parameter gradients) with the values of v.
inline Tensor on_f32(Backend& be, const Shape& shape, const Vec& v) {
  return on_dtype(be, shape, v, DType::f32);
}

inline Tensor on_i32(Backend& be, const Shape& shape, const std::vector<int32_t>& v) {
  Tensor h = Tensor::empty(shape, DType::i32);
  std::copy(v.begin(), v.end(), h.data<int32_t>());
  if (be.device().is_cpu()) return h;
  Tensor d = be.empty(shape, DType::i32);
  be.copy(h, d);
  return d;
}

/// New zero-filled activation tensor (the backend's activation dtype).
inline Tensor zeros(Backend& be, const Shape& shape) {
  Tensor t = be.empty(shape, act_dtype(be));
  be.zero(t);
  return t;
}
/// New zero-filled f32 tensor on the backend.
inline Tensor zeros_f32(Backend& be, const Shape& shape) {
  Tensor t = be.empty(shape, DType::f32);
  be.zero(t);
  return t;
}

/// Values of a backend tensor as float64 (any strides).
inline Vec values(Backend& be, const Tensor& t) {
  be.synchronize();
  Tensor h = t;
  if (!t.device().is_cpu()) {
    h = Tensor::empty(t.shape(), t.dtype());
    be.copy(t, h);
  } else if (!t.is_contiguous()) {
    h = t.clone();
  }
  Vec v(size_t(h.numel()));
  if (h.dtype() == DType::bf16) {
    const bf16_t* p = h.data<bf16_t>();
    for (size_t i = 0; i < v.size(); ++i) v[i] = bf16_to_f32(p[i]);
  } else if (h.dtype() == DType::f16) {
    const f16_t* p = h.data<f16_t>();
    for (size_t i = 0; i < v.size(); ++i) v[i] = f16_to_f32(p[i]);
  } else {
    const float* p = h.data<float>();
    for (size_t i = 0; i < v.size(); ++i) v[i] = p[i];
  }
  return v;
}

/// max |a - ref| / max |ref| (with a floor so all-tiny references do not divide by zero).
struct Diff {
  double rel = 0, abs = 0;
  size_t worst = 0;
};
inline Diff compare(const Vec& a, const Vec& ref) {
  Diff d;
  double scale = 1e-30;
  for (double r : ref) scale = std::max(scale, std::abs(r));
  for (size_t i = 0; i < a.size(); ++i) {
    const double e = std::abs(a[i] - ref[i]);
    if (!(e <= d.abs)) {  // also catches NaN
      d.abs = std::isnan(e) ? INFINITY : e;
      d.worst = i;
    }
  }
  d.rel = d.abs / scale;
  return d;
}

#define NURI_EXPECT_CLOSE(actual, ref, rtol, what)                                          \
  do {                                                                                      \
    const ::nuri::test::Vec a_ = (actual);                                                  \
    const ::nuri::test::Vec r_ = (ref);                                                     \
    ASSERT_EQ(a_.size(), r_.size()) << what;                                                \
    const auto d_ = ::nuri::test::compare(a_, r_);                                          \
    EXPECT_LE(d_.rel, (rtol)) << what << ": max abs error " << d_.abs << " at index "      \
                              << d_.worst << " (got " << a_[d_.worst] << ", expected "     \
                              << r_[d_.worst] << ")";                                       \
  } while (0)

/// A differentiable op for the gradient check: inputs, a float64 forward to outputs, the random
/// output weights (douts) and the backend's gradients of L = Σ <douts, outputs>.
struct GradCheck {
  std::vector<Vec> inputs;
  std::vector<std::string> input_names;
  std::function<std::vector<Vec>(const std::vector<Vec>&)> forward;
  std::vector<Vec> douts;
  std::vector<Vec> grads;  // from the backend, one per input
};

inline double weighted_sum(const GradCheck& g, const std::vector<Vec>& in) {
  const auto outs = g.forward(in);
  double s = 0;
  for (size_t o = 0; o < outs.size(); ++o) {
    for (size_t i = 0; i < outs[o].size(); ++i) s += outs[o][i] * g.douts[o][i];
  }
  return s;
}

/// Element-by-element central differences (tiny shapes) or `directions` random directional
/// derivatives (larger shapes), against the backend's gradients, within rtol.
inline void check_gradients(const GradCheck& g, bool elementwise, double rtol,
                            const std::string& what, int directions = 3) {
  ASSERT_EQ(g.inputs.size(), g.grads.size());
  const double h = 1e-5;
  if (elementwise) {
    for (size_t k = 0; k < g.inputs.size(); ++k) {
      Vec num(g.inputs[k].size());
      auto in = g.inputs;
      for (size_t i = 0; i < in[k].size(); ++i) {
        const double x0 = in[k][i];
        const double step = h * std::max(1.0, std::abs(x0));
        in[k][i] = x0 + step;
        const double lp = weighted_sum(g, in);
        in[k][i] = x0 - step;
        const double lm = weighted_sum(g, in);
        in[k][i] = x0;
        num[i] = (lp - lm) / (2 * step);
      }
      NURI_EXPECT_CLOSE(g.grads[k], num, rtol,
                        what << ": d/d" << g.input_names[k] << " vs finite differences");
    }
    return;
  }
  for (int dir = 0; dir < directions; ++dir) {
    std::vector<Vec> u(g.inputs.size());
    double analytic = 0, gnorm2 = 0;
    for (size_t k = 0; k < g.inputs.size(); ++k) {
      u[k] = random_vec(int64_t(g.inputs[k].size()), 9000 + 31 * dir + k);
      for (size_t i = 0; i < u[k].size(); ++i) {
        analytic += g.grads[k][i] * u[k][i];
        gnorm2 += g.grads[k][i] * g.grads[k][i];
      }
    }
    auto plus = g.inputs, minus = g.inputs;
    for (size_t k = 0; k < g.inputs.size(); ++k) {
      for (size_t i = 0; i < u[k].size(); ++i) {
        plus[k][i] += h * u[k][i];
        minus[k][i] -= h * u[k][i];
      }
    }
    const double numeric = (weighted_sum(g, plus) - weighted_sum(g, minus)) / (2 * h);
    // With u ~ N(0, 1) per element, an error e in the gradient moves <grad, u> by about |e|, so
    // the error is measured against |grad| (not |grad|·|u|, which would be √n times looser).
    const double scale = std::sqrt(gnorm2) + 1e-30;
    EXPECT_LE(std::abs(analytic - numeric) / scale, rtol)
        << what << ": directional derivative " << dir << ": backend " << analytic
        << ", finite differences " << numeric << " (|grad| = " << scale << ")";
  }
}

/// Name for a parametrized instance: "cpu_7x5x3" style.
inline std::string sanitize_name(std::string s) {
  for (char& c : s) {
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  }
  return s;
}

}  // namespace nuri::test
