// What the launchers ask of the current device to size a grid or choose a tile shape: its SM
// count and its shared memory a SM. Host code only (no device code), so the .cu launchers and
// plain C++ can include it.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstddef>

#include "cuda_check.h"

namespace nuri::kernels {

struct DeviceInfo {
  int sms = 1;             // streaming multiprocessors
  size_t smem_per_sm = 0;  // bytes of shared memory a SM (the driver reserves 1 KiB a block)
};

/// The current device's DeviceInfo. Cached per device on GPUs, where the property query is
/// slow; asked on every call under the emulator, whose device tests change between calls
/// (NURI_EMU_SMS, NURI_EMU_SMEM_PER_SM).
inline DeviceInfo current_device_info() {
  int dev = 0;
  NURI_CUDA_CHECK(cudaGetDevice(&dev));
  NURI_CHECK(dev >= 0 && dev < 64, "CUDA device index ", dev, " is out of range (0 to 63)");
  auto query = [dev] {
    cudaDeviceProp prop{};
    NURI_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
    return DeviceInfo{prop.multiProcessorCount > 0 ? prop.multiProcessorCount : 1,
                      prop.sharedMemPerMultiprocessor};
  };
#if defined(NURI_CUDA_EMULATION)
  return query();
#else
  // sms is stored last and read first: a nonzero count means smem_per_sm is there too.
  static std::atomic<int> sms[64];
  static std::atomic<size_t> smem[64];
  if (const int n = sms[dev].load(std::memory_order_acquire); n != 0) {
    return DeviceInfo{n, smem[dev].load(std::memory_order_relaxed)};
  }
  const DeviceInfo info = query();
  smem[dev].store(info.smem_per_sm, std::memory_order_relaxed);
  sms[dev].store(info.sms, std::memory_order_release);
  return info;
#endif
}

}  // namespace nuri::kernels
