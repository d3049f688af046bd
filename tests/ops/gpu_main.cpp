// main() of test_ops_gpu: the op suites on the real CUDA backend. Without a usable device each
// test prints gtest's "[  SKIPPED ]" marker, which ctest reports as Skipped (never Passed).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>

int main(int argc, char** argv) {
  bool listing = false;
  for (int i = 1; i < argc; ++i) listing = listing || std::strcmp(argv[i], "--gtest_list_tests") == 0;
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (!listing && (err != cudaSuccess || count == 0)) {
    std::printf("[  SKIPPED ] no CUDA device (%s): the gpu label needs a GPU\n",
                err == cudaSuccess ? "0 devices" : cudaGetErrorString(err));
    return 0;
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
