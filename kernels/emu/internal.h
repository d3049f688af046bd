// Shared between the emulator's scheduler and its runtime subset (device memory). Internal.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

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

/// The emulated device's shared memory per SM (runtime.cpp; NURI_EMU_SMEM_PER_SM).
size_t emulated_smem_per_sm();

}  // namespace nuri::emu
