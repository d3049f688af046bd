// What the launchers ask of the current device to size a grid or choose a tile shape: its SM
// count and its shared memory a SM. Host code only (no device code), so the .cu launchers and
// plain C++ can include it.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstddef>
#include <cstdlib>

#include "cuda_check.h"

namespace nuri::kernels {

struct DeviceInfo {
  int sms = 1;             // streaming multiprocessors
  size_t smem_per_sm = 0;  // bytes of shared memory a SM (the driver reserves 1 KiB a block)
                           // that tile shapes are chosen by (tile_smem_per_sm)
};

/// The shared memory a SM the launchers choose tile shapes by: the device's, or
/// NURI_TILE_SMEM_PER_SM bytes (32768 up to the device's), so that an A100 or H100 can run the
/// tiles a GPU with less takes (an RTX 3090/4090: 102400) in tests and measurements. Every tile
/// shape chosen for less shared memory fits in more. Read at each call: tests set it between
/// calls.
inline size_t tile_smem_per_sm(size_t device_smem) {
  const char* env = std::getenv("NURI_TILE_SMEM_PER_SM");
  if (!env || !*env) return device_smem;
  char* end = nullptr;
  const unsigned long long v = std::strtoull(env, &end, 10);
  NURI_CHECK(end != env && *end == '\0' && v >= 32768 && v <= device_smem,
             "NURI_TILE_SMEM_PER_SM='", env, "': choose tiles for an integer number of bytes of "
             "shared memory a SM from 32768 to this device's ", device_smem, ", or unset it");
  return size_t(v);
}

/// The current device's DeviceInfo, its shared memory as tile_smem_per_sm gives it. Cached per
/// device on GPUs, where the property query is slow; asked on every call under the emulator,
/// whose device tests change between calls (NURI_EMU_SMS, NURI_EMU_SMEM_PER_SM).
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
  DeviceInfo info = query();
  info.smem_per_sm = tile_smem_per_sm(info.smem_per_sm);
  return info;
#else
  // sms is stored last and read first: a nonzero count means smem_per_sm is there too.
  static std::atomic<int> sms[64];
  static std::atomic<size_t> smem[64];
  if (const int n = sms[dev].load(std::memory_order_acquire); n != 0) {
    return DeviceInfo{n, tile_smem_per_sm(smem[dev].load(std::memory_order_relaxed))};
  }
  const DeviceInfo info = query();
  smem[dev].store(info.smem_per_sm, std::memory_order_relaxed);
  sms[dev].store(info.sms, std::memory_order_release);
  return DeviceInfo{info.sms, tile_smem_per_sm(info.smem_per_sm)};
#endif
}

}  // namespace nuri::kernels
