// ThreadSanitizer's fiber and annotation API, or nothing when the build is not under TSan.
// Every emulated CUDA thread is a TSan fiber; happens-before edges are added exactly where CUDA
// has them (launch, __syncthreads, __syncwarp, thread exit, stream order), so the detector
// reports the races a GPU would randomize. Internal to kernels/emu.
#pragma once

#include <cstddef>
#include <mutex>

// fiber.cpp is compiled without instrumentation but still drives TSan: NURI_EMU_TSAN_API.
#if defined(__SANITIZE_THREAD__) || defined(NURI_EMU_TSAN_API)
#define NURI_EMU_TSAN 1
extern "C" {
void* __tsan_get_current_fiber(void);
void* __tsan_create_fiber(unsigned flags);
void __tsan_destroy_fiber(void* fiber);
void __tsan_switch_to_fiber(void* fiber, unsigned flags);
void __tsan_set_fiber_name(void* fiber, const char* name);
void __tsan_acquire(void* addr);
void __tsan_release(void* addr);
void AnnotateIgnoreReadsBegin(const char* file, int line);
void AnnotateIgnoreReadsEnd(const char* file, int line);
void AnnotateIgnoreWritesBegin(const char* file, int line);
void AnnotateIgnoreWritesEnd(const char* file, int line);
void AnnotateIgnoreSyncBegin(const char* file, int line);
void AnnotateIgnoreSyncEnd(const char* file, int line);
void __tsan_read_range(void* addr, unsigned long size);
void __tsan_write_range(void* addr, unsigned long size);
}
#else
#define NURI_EMU_TSAN 0
#endif

namespace nuri::emu::tsan {

#if NURI_EMU_TSAN
constexpr unsigned kNoSync = 1;  // __tsan_switch_to_fiber_no_sync
inline void* current() { return __tsan_get_current_fiber(); }
inline void* create(const char* name) {
  void* f = __tsan_create_fiber(0);
  __tsan_set_fiber_name(f, name);
  return f;
}
inline void destroy(void* f) { __tsan_destroy_fiber(f); }
inline void switch_to(void* f) { __tsan_switch_to_fiber(f, kNoSync); }
inline void acquire(void* addr) { __tsan_acquire(addr); }
inline void release(void* addr) { __tsan_release(addr); }
inline void ignore_begin() {
  AnnotateIgnoreReadsBegin(__FILE__, __LINE__);
  AnnotateIgnoreWritesBegin(__FILE__, __LINE__);
}
inline void ignore_end() {
  AnnotateIgnoreReadsEnd(__FILE__, __LINE__);
  AnnotateIgnoreWritesEnd(__FILE__, __LINE__);
}
inline void sync_ignore_begin() { AnnotateIgnoreSyncBegin(__FILE__, __LINE__); }
inline void sync_ignore_end() { AnnotateIgnoreSyncEnd(__FILE__, __LINE__); }
/// An access to [p, p + n) by the current context, as the detector sees a plain one.
inline void access(const void* p, size_t n, bool write) {
  if (write) {
    __tsan_write_range(const_cast<void*>(p), n);
  } else {
    __tsan_read_range(const_cast<void*>(p), n);
  }
}
#else
inline void* current() { return nullptr; }
inline void* create(const char*) { return nullptr; }
inline void destroy(void*) {}
inline void switch_to(void*) {}
inline void acquire(void*) {}
inline void release(void*) {}
inline void ignore_begin() {}
inline void ignore_end() {}
inline void access(const void*, size_t, bool) {}
inline void sync_ignore_begin() {}
inline void sync_ignore_end() {}
#endif

/// A mutex for the emulator's own bookkeeping, invisible to the detector as the driver's locks
/// are in a real CUDA build: taking it orders nothing between the threads that take it (a lock
/// shared by a training thread and a progress thread would otherwise order everything they
/// do), and what it guards is read and written in an ignore region, opened at lock() and
/// closed at unlock() in the same context.
class QuietMutex {
 public:
  void lock() {
    sync_ignore_begin();
    mu_.lock();
    sync_ignore_end();
    ignore_begin();
  }
  bool try_lock() {
    sync_ignore_begin();
    const bool got = mu_.try_lock();
    sync_ignore_end();
    if (got) ignore_begin();
    return got;
  }
  void unlock() {
    ignore_end();
    sync_ignore_begin();
    mu_.unlock();
    sync_ignore_end();
  }

 private:
  std::mutex mu_;
};

/// Emulator bookkeeping in a scope of a fiber: invisible to the race detector.
struct Ignore {
  Ignore() { ignore_begin(); }
  ~Ignore() { ignore_end(); }
  Ignore(const Ignore&) = delete;
  Ignore& operator=(const Ignore&) = delete;
};

}  // namespace nuri::emu::tsan
