// The sm_90a GEMM's persistent grid on an H100/H200 (test_ops_gpu only: real CUDA builds, label
// gpu; skipped where the device or the build has no sm_90a GEMM). The emulated tree shows blocks
// walking tiles on 1 and 2 emulated SMs (KernelCounters.Sm90MatmulBlocksWalkSeveralTiles...);
// here the products have more than twice an H100's 132 SMs in tiles, so on the hardware each
// block walks two or three, and the results must be those of the same kernel launched a block a
// tile (NURI_GEMM_SM90_GRID=tiles), bit for bit: a tile's sums are the same instructions in the
// same order on either grid.
#include <memory>

#include "backend/cuda/cuda_backend.h"
#include "ops/harness.h"

namespace nuri::test {
namespace {

TEST(Sm90GemmGrid, PersistentBlocksGiveTheBitsOfABlockATile) {
  auto [persistent, why] = make_backend_with("cuda", "NURI_GEMM", "sm90");
  if (!persistent) GTEST_SKIP() << why;
  std::unique_ptr<Backend> per_tile;
  {
    ScopedEnv grid("NURI_GEMM_SM90_GRID", "tiles");
    auto [be, why_not] = make_backend_with("cuda", "NURI_GEMM", "sm90");
    ASSERT_TRUE(be) << why_not;
    per_tile = std::move(be);
  }
  // 128 × 256 tiles: y 17 × 17 = 289 (17 K steps of 64), dx 17 × 5 = 85 (17 steps), dW 33 × 5 =
  // 165 (35 steps).
  const int64_t m = 2176, n = 4160, k = 1056;
  for (DType dt : {DType::bf16, DType::f16}) {
    SCOPED_TRACE(dtype_name(dt));
    const Vec x = rounded(random_vec(m * k, 21), dt), w = rounded(random_vec(n * k, 22, 0.3), dt),
              b = rounded(random_vec(n, 23), dt), dy = rounded(random_vec(m * n, 24), dt);
    auto run = [&](Backend& be) {
      auto& cuda = static_cast<CudaBackend&>(be);
      const int64_t calls = cuda.sm90_gemm_calls();
      Tensor tx = on_dtype(be, {m, k}, x, dt), tw = on_dtype(be, {n, k}, w, dt),
             tb = on_dtype(be, {n}, b, dt), tdy = on_dtype(be, {m, n}, dy, dt);
      Tensor ty = be.empty({m, n}, dt), tpre = be.empty({m, n}, dt), tdx = be.empty({m, k}, dt);
      Tensor tdw = zeros_f32(be, {n, k});
      be.matmul(tx, tw, tb, ty, Activation::gelu, tpre, Tensor());
      be.matmul_backward_input(tdy, tw, tdx, false, Tensor());
      be.matmul_backward_weight(tdy, tx, tdw, false);
      EXPECT_EQ(cuda.sm90_gemm_calls() - calls, 3);
      return std::vector<Vec>{values(be, ty), values(be, tpre), values(be, tdx), values(be, tdw)};
    };
    const std::vector<Vec> a = run(*persistent), r = run(*per_tile);
    const char* names[4] = {"y", "pre", "dx", "dW"};
    for (size_t t = 0; t < a.size(); ++t) {
      ASSERT_EQ(a[t].size(), r[t].size());
      size_t differ = 0, first = 0, nonzero = 0;
      for (size_t i = 0; i < a[t].size(); ++i) {
        nonzero += r[t][i] != 0;
        if (a[t][i] != r[t][i] && differ++ == 0) first = i;
      }
      EXPECT_GT(nonzero, a[t].size() / 2) << names[t];
      EXPECT_EQ(differ, 0u) << names[t] << ": " << differ << " elements differ, the first at "
                            << first;
    }
  }
}

}  // namespace
}  // namespace nuri::test
