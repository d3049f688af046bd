// Host side of nuri's sm_90a kernels (attention_*_sm90, matmul_sm90.cuh): whether this build
// holds them, and the register pool their setmaxnreg split must fit.
#pragma once

namespace nuri::kernels {

/// Whether this build holds the sm_90a kernels (nvcc with 90a among CMAKE_CUDA_ARCHITECTURES, or
/// the emulator, which runs them everywhere).
bool sm90a_compiled();

/// The registers a thread of a block of `threads` is launched with in a kernel that moves them
/// between warpgroups with setmaxnreg (__launch_bounds__(threads, 1): 65536 / threads, down to
/// a multiple of 8, at most 256; 168 for 384). That is the block's whole pool: setmaxnreg.inc
/// waits until the pool has what it asks for, so a split that needs more never goes on.
/// scripts/check-kernels.sh checks that ptxas gave the kernels this count; the emulator
/// (emu::setmaxnreg_launch_count) takes its pool from here.
constexpr int setmaxnreg_launch_count(int threads) {
  return 65536 / threads / 8 * 8 < 256 ? 65536 / threads / 8 * 8 : 256;
}

/// Whether a producer warpgroup at `producer` and `consumers` warpgroups at `consumer` registers
/// a thread fit the pool of a block of `threads`.
constexpr bool setmaxnreg_split_fits(int threads, int producer, int consumer, int consumers) {
  return threads == 128 * (1 + consumers) &&
         producer + consumers * consumer <= (1 + consumers) * setmaxnreg_launch_count(threads);
}

}  // namespace nuri::kernels
