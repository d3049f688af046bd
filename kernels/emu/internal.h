// Shared between the emulator's scheduler and its runtime subset (device memory). Internal.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace nuri::emu {

/// Writes where `addr` lies relative to the emulated device allocations into buf, e.g.
/// "12 bytes past the end of a 4096-byte device allocation at 0x7f...". Allocates nothing (it
/// runs in the fault handler).
void describe_address(const void* addr, char* buf, size_t n);

/// Checks the poisoned padding around every live allocation; returns "" or a description of the
/// first overwritten one (a write past the end that the guard pages did not catch).
std::string check_canaries();

/// The current launch, for the fault handler: "kernel K, block (..), thread (..), block-order
/// seed S". Allocates nothing.
void describe_launch(char* buf, size_t n);

/// Installs the SIGSEGV/SIGBUS handler that reports out-of-bounds accesses (idempotent).
void install_fault_handler();

/// A live allocation a kernel may address: device memory (cudaMalloc) or pinned host memory
/// (cudaMallocHost), [lo, hi).
struct MemoryRange {
  uintptr_t lo, hi;
  bool device;
};
/// The live allocations, sorted by address (taken at each launch's start, on the launching
/// thread: the kernel's checks then read the copy and take no lock, which the race detector
/// would see as an edge between the emulated threads).
std::vector<MemoryRange> memory_ranges();

/// Whether a cudaStream_t names the legacy default stream (null, cudaStreamLegacy; and
/// cudaStreamPerThread, which the emulator takes as it).
bool is_legacy_stream(const void* stream);

/// Runs `work` as the next piece of work of CUDA stream `stream` (a cudaStream_t; null or
/// cudaStreamLegacy: the legacy default stream) in the stream's ThreadSanitizer context, after
/// what the host has done so far and the stream's earlier work (runtime.cpp's stream model).
/// The host does not take the work's history: only its waits do.
void on_stream(void* stream, const std::function<void()>& work);
/// Inside on_stream's work, which runs hidden from the race detector (its plumbing lives on the
/// host thread's stack and heap, which the host reuses without waiting for the stream): the
/// work's device accesses, which the detector sees. device_touch: an access to [p, p + n) with
/// no effect, for work whose bytes move hidden (the NCCL operations' transport).
void device_memmove(void* dst, const void* src, size_t n);
void device_memset(void* dst, int value, size_t n);
void device_touch(const void* p, size_t n, bool write);

/// cudaStreamDestroy: frees the stream's pool of emulated threads' fibers and stacks.
void forget_stream(const void* stream);

/// The emulated device's shared memory per SM (runtime.cpp; NURI_EMU_SMEM_PER_SM).
size_t emulated_smem_per_sm();
/// The calling thread's current device (cudaSetDevice; NURI_EMU_DEVICES devices), and the
/// device of stream `stream` (where it was created; the legacy stream: the current device).
int current_device();
int stream_device(const void* stream);

}  // namespace nuri::emu
