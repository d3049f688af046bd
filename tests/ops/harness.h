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
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "nuri/backend/backend.h"
#include "nuri/core/rng.h"

namespace nuri::test {

using Vec = std::vector<double>;

/// Backends every op suite runs on (all built ones).
inline std::vector<std::string> backends() { return available_backends(); }

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

/// Relative tolerance multiplier for a backend: 1 for fp32 backends.
inline double backend_tol(const std::string& name) { return 1.0; }

/// Random N(0, scale²) values from a seed, already rounded to float (so the float64 reference
/// sees exactly what an f32 backend sees).
inline Vec random_vec(int64_t n, uint64_t seed, double scale = 1.0) {
  Philox rng(seed, 0x7e57);
  Vec v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[size_t(i)] = double(float(rng.normal(uint64_t(i)) * scale));
  return v;
}

/// A CPU f32 tensor holding v (rounded to float).
inline Tensor host_tensor(const Shape& shape, const Vec& v) {
  Tensor t = Tensor::empty(shape, DType::f32);
  EXPECT_EQ(int64_t(v.size()), t.numel());
  float* p = t.data<float>();
  for (size_t i = 0; i < v.size(); ++i) p[i] = float(v[i]);
  return t;
}

/// A tensor on the backend's device with the values of v.
inline Tensor on(Backend& be, const Shape& shape, const Vec& v) {
  Tensor h = host_tensor(shape, v);
  if (be.device().is_cpu()) return h;
  Tensor d = be.empty(shape, DType::f32);
  be.copy(h, d);
  return d;
}

inline Tensor on_i32(Backend& be, const Shape& shape, const std::vector<int32_t>& v) {
  Tensor h = Tensor::empty(shape, DType::i32);
  std::copy(v.begin(), v.end(), h.data<int32_t>());
  if (be.device().is_cpu()) return h;
  Tensor d = be.empty(shape, DType::i32);
  be.copy(h, d);
  return d;
}

/// New zero-filled f32 tensor on the backend.
inline Tensor zeros(Backend& be, const Shape& shape) {
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
  const float* p = h.data<float>();
  for (size_t i = 0; i < v.size(); ++i) v[i] = p[i];
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
