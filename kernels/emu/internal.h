// Shared between the emulator's scheduler and its runtime subset (device memory). Internal.
#pragma once

#include <cstddef>
#include <cstdint>
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

/// The emulated device's shared memory per SM (runtime.cpp; NURI_EMU_SMEM_PER_SM).
size_t emulated_smem_per_sm();

}  // namespace nuri::emu
