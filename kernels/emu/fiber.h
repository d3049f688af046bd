// Fibers for the emulator: Boost.Context behind a small interface, compiled WITHOUT
// ThreadSanitizer instrumentation (fiber.cpp). The switch of TSan's current fiber happens right
// before each stack switch, inside uninstrumented code: were Boost's templates instrumented, the
// function entries and exits around a switch would land on different TSan fibers' shadow stacks,
// which then grow without bound. Internal to kernels/emu.
#pragma once

#include <cstddef>

namespace nuri::emu::fiber {

/// A stack pool: stacks (with a guard page) go back to it only at recycle(), i.e. between
/// launches, never from one block to the next of the same launch (see scheduler.cpp).
class Stacks;
Stacks* new_stacks();
/// Unmaps the pool's stacks (none may be in use).
void delete_stacks(Stacks* s);

/// The launch is over: its stacks may serve the next one.
void recycle(Stacks* s);

struct Fiber;

/// A fiber that will run entry(arg) on a stack from `stacks`; when entry returns, TSan is switched
/// to `sched_tsan` and control goes back to the scheduler.
Fiber* create(Stacks* stacks, void (*entry)(void*), void* arg, void* sched_tsan);

/// From the scheduler: switches TSan to `tsan_fiber` (opening an ignore region first time, which
/// the fiber closes) and runs f until it suspends or ends. Returns whether it ended.
bool resume(Fiber* f, void* tsan_fiber, bool first);

/// From inside f: switches TSan to `sched_tsan` and returns to the scheduler; returns when
/// resumed. Called inside an ignore region, which the caller ends.
void suspend(Fiber* f, void* sched_tsan);

/// Frees f; a fiber that has not ended is unwound first (under tsan_fiber, in an ignore region).
void destroy(Fiber* f, void* tsan_fiber, void* sched_tsan);

}  // namespace nuri::emu::fiber
