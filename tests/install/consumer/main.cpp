// A downstream program that knows nuri only through its installed headers and nuri::nuri:
// y = x·wᵀ + bias on the CPU backend, checked against a product worked out by hand.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <string>

#include "nuri/backend/backend.h"
#include "nuri/backend/build_info.h"
#include "nuri/core/tensor.h"

namespace {

constexpr int M = 3, K = 5, N = 4;
constexpr float kX[M][K] = {{1, 2, 3, 4, 5}, {0, -1, 2, -3, 4}, {2, 0, 1, 0, -1}};
constexpr float kW[N][K] = {{1, 0, 0, 0, 0}, {0, 1, 0, 0, 1}, {1, 1, 1, 1, 1}, {2, -1, 0, 0.5f, 0}};
constexpr float kBias[N] = {0.5f, -1, 2, 0.25f};
// By hand: row 0 of y is (1, 2+5, 1+2+3+4+5, 2-2+2) + bias = (1.5, 6, 17, 2.25), and so on.
constexpr float kExpected[M][N] = {
    {1.5f, 6, 17, 2.25f}, {0.5f, 2, 4, -0.25f}, {2.5f, -2, 4, 4.25f}};

int run() {
  const nuri::BuildInfo info = nuri::build_info();
  std::printf("nuri %s, blas %s, cuda %d\n", info.version.c_str(), info.blas.c_str(), info.cuda);
  if (info.version != NURI_EXPECTED_VERSION) {
    std::fprintf(stderr, "FAIL: the library says version %s, the package config %s\n",
                 info.version.c_str(), NURI_EXPECTED_VERSION);
    return 1;
  }

  std::unique_ptr<nuri::Backend> backend = nuri::make_backend("cpu");
  nuri::Tensor x = backend->empty({M, K});
  nuri::Tensor w = backend->empty({N, K});
  nuri::Tensor bias = backend->empty({N});
  nuri::Tensor y = backend->empty({M, N});
  std::memcpy(x.data<float>(), kX, sizeof kX);
  std::memcpy(w.data<float>(), kW, sizeof kW);
  std::memcpy(bias.data<float>(), kBias, sizeof kBias);
  y.fill_(-1000.0);

  backend->matmul(x, w, bias, y, nuri::Activation::none, nuri::Tensor(), nuri::Tensor());
  backend->synchronize();

  const float* out = y.data<float>();
  int bad = 0;
  for (int m = 0; m < M; ++m) {
    for (int n = 0; n < N; ++n) {
      const float got = out[m * N + n];
      if (!(std::fabs(got - kExpected[m][n]) <= 1e-5f)) {
        std::fprintf(stderr, "FAIL: y[%d][%d] = %g, expected %g\n", m, n, got, kExpected[m][n]);
        ++bad;
      }
    }
  }
  if (bad) return 1;
  std::printf("matmul [%d,%d]x[%d,%d]^T + bias on %s: ok\n", M, K, N, K, backend->name().c_str());

  // nuri::Error must cross the shared-library boundary as itself.
  try {
    nuri::make_backend("no-such-backend");
    std::fprintf(stderr, "FAIL: make_backend(\"no-such-backend\") did not throw\n");
    return 1;
  } catch (const nuri::Error& e) {
    std::printf("unknown backend rejected: %s\n", e.what());
  }
  return 0;
}

}  // namespace

int main() {
  try {
    return run();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "FAIL: exception: %s\n", e.what());
    return 1;
  }
}
