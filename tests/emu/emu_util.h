// Device buffers for the emulator's self-tests (cudaMalloc'ed by the emulated runtime).
#pragma once

#include <gtest/gtest.h>

#include <vector>

#include "common.cuh"
#include "test_util.h"

namespace nuri::test {

template <class T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t n) : n_(n) { NURI_CUDA_CHECK(cudaMalloc(&p_, n * sizeof(T))); }
  explicit DeviceBuffer(const std::vector<T>& v) : DeviceBuffer(v.size()) { upload(v); }
  ~DeviceBuffer() { cudaFree(p_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  T* get() const { return static_cast<T*>(p_); }
  void upload(const std::vector<T>& v) {
    NURI_CUDA_CHECK(cudaMemcpy(p_, v.data(), n_ * sizeof(T), cudaMemcpyHostToDevice));
  }
  std::vector<T> download() const {
    std::vector<T> v(n_);
    NURI_CUDA_CHECK(cudaMemcpy(v.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return v;
  }

 private:
  void* p_ = nullptr;
  size_t n_;
};

/// Whether races are detected in this build (the race tests need -DNURI_TSAN=ON).
#if defined(__SANITIZE_THREAD__)
constexpr bool kRaceDetection = true;
#else
constexpr bool kRaceDetection = false;
#endif

}  // namespace nuri::test
