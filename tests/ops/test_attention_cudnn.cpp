// cuDNN's fused attention (NURI_ATTENTION=cudnn, real CUDA builds with the cuDNN frontend)
// against nuri's kernels on the same inputs: forward out and lse, backward dq, dk, dv, for both
// head dims, causal and not, GQA and multi-query, bf16 and f16. Built into test_ops_gpu only
// (label gpu); skipped, saying why, without a device, in builds without the path, and where
// libcudnn cannot be loaded.
#include <string>

#include "ops/harness.h"

namespace nuri::test {
namespace {

struct Case {
  int64_t b, t, h, hkv, d;
  bool causal;
  DType dtype;
};

TEST(AttentionCudnn, AgreesWithNurisKernels) {
  auto [mine, e1] = make_backend_with("cuda", "NURI_ATTENTION", "nuri");
  ASSERT_TRUE(mine) << e1;
  auto [theirs, e2] = make_backend_with("cuda", "NURI_ATTENTION", "cudnn");
  if (!theirs) GTEST_SKIP() << e2;
  for (const Case& c : {Case{2, 200, 4, 2, 64, true, DType::bf16},
                        Case{1, 256, 2, 2, 128, false, DType::bf16},
                        Case{1, 130, 4, 1, 128, true, DType::f16}}) {
    SCOPED_TRACE("B " + std::to_string(c.b) + " T " + std::to_string(c.t) + " H " +
                 std::to_string(c.h) + " Hkv " + std::to_string(c.hkv) + " D " +
                 std::to_string(c.d) + (c.causal ? " causal " : " full ") + dtype_name(c.dtype));
    const Shape qs{c.b, c.t, c.h, c.d}, ks{c.b, c.t, c.hkv, c.d};
    const Vec q = random_vec(c.b * c.t * c.h * c.d, 91), k = random_vec(c.b * c.t * c.hkv * c.d, 92),
              v = random_vec(c.b * c.t * c.hkv * c.d, 93), dout = random_vec(c.b * c.t * c.h * c.d, 94);
    std::vector<Vec> results[2];
    for (int which = 0; which < 2; ++which) {
      Backend& be = which ? *theirs : *mine;
      Tensor tq = on_dtype(be, qs, q, c.dtype), tk = on_dtype(be, ks, k, c.dtype),
             tv = on_dtype(be, ks, v, c.dtype);
      Tensor out = be.empty(qs, c.dtype), lse = zeros_f32(be, {c.b, c.h, c.t});
      Tensor dq = be.empty(qs, c.dtype), dk = be.empty(ks, c.dtype), dv = be.empty(ks, c.dtype);
      AttentionOptions opt;
      opt.causal = c.causal;
      try {
        be.attention(tq, tk, tv, out, lse, opt);
        be.attention_backward(tq, tk, tv, out, lse, on_dtype(be, qs, dout, c.dtype), dq, dk, dv,
                              opt);
      } catch (const Error& e) {
        if (which && std::string(e.what()).find("libcudnn could not be loaded") != std::string::npos) {
          GTEST_SKIP() << e.what();
        }
        throw;
      }
      results[which] = {values(be, out), values(be, lse), values(be, dq), values(be, dk),
                        values(be, dv)};
    }
    const char* what[] = {"out", "lse", "dq", "dk", "dv"};
    for (int i = 0; i < 5; ++i) {
      double scale = 0, worst = 0;
      for (size_t j = 0; j < results[0][size_t(i)].size(); ++j) {
        scale = std::max(scale, std::abs(results[0][size_t(i)][j]));
        worst = std::max(worst, std::abs(results[0][size_t(i)][j] - results[1][size_t(i)][j]));
      }
      // Two computations each rounded to 16 bits (lse is f32): a few roundings apart.
      const double bound = i == 1 ? 1e-3 * std::max(scale, 1.0) : 4.0 / 128 * scale;
      EXPECT_LE(worst, bound) << what[i] << ": cuDNN differs from nuri's kernels by " << worst
                              << " (largest value " << scale << ")";
    }
  }
}

}  // namespace
}  // namespace nuri::test
