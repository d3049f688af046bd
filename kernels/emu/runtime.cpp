// The subset of the CUDA runtime nuri's host code calls, defined for the emulated build (which
// links this instead of libcudart; the declarations come from the real cuda_runtime_api.h).
//
// Device memory is host memory with strict edges: every allocation is mmap'ed between two
// PROT_NONE guard pages with its end against the upper one (rounded to 256 bytes), is poisoned
// with 0xff bytes (NaN in f32 and bf16) so reading unwritten memory shows up, and the padding is
// checked after every launch.
//
// Streams and events run their work synchronously, at the call, but order it as CUDA does: each
// stream is a ThreadSanitizer context (its work, kernels included, runs in it) that takes the
// host's history at each enqueue and what its events make it wait for, and the host takes a
// stream's history only where CUDA makes the host wait (a stream, event or device
// synchronization, a successful query, a copy that returns complete, cudaFree). Work on two
// streams with no event between them, or host code reading what a stream wrote before waiting
// for it, is a race the detector reports, as a GPU would run them concurrently. The legacy
// default stream (null) orders itself with the streams created without cudaStreamNonBlocking.
#include <cuda_runtime.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "emu/internal.h"
#include "emu/tsan.h"
#include "nuri/core/error.h"

namespace nuri::emu {
namespace {

constexpr size_t kAlign = 256;  // cudaMalloc's alignment
constexpr unsigned char kPoison = 0xff;

struct Allocation {
  char* map;        // mmap'ed region, guard pages included
  size_t map_size;
  size_t size;      // what the caller asked for
  size_t padded;    // size rounded up to kAlign
};

struct Memory {
  tsan::QuietMutex mu;
  std::map<uintptr_t, Allocation> live;  // by user address
  std::map<uintptr_t, size_t> pinned;     // cudaMallocHost: size by address
};
Memory& memory() {
  static Memory* m = new Memory;  // never destroyed: frees may come from static destructors
  return *m;
}

size_t page_size() { return size_t(sysconf(_SC_PAGESIZE)); }

cudaError_t& last_error() {
  static thread_local cudaError_t e = cudaSuccess;
  return e;
}
cudaError_t fail(cudaError_t e) {
  last_error() = e;
  return e;
}

/// The live allocation containing [p, p + n), or null.
const Allocation* find(const void* p, size_t n) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  auto& live = memory().live;
  auto it = live.upper_bound(a);
  if (it == live.begin()) return nullptr;
  --it;
  if (a + n > it->first + it->second.size) return nullptr;
  return &it->second;
}

}  // namespace

// ---- streams and events: happens-before as CUDA orders the work ----------------------------

bool is_legacy_stream(const void* handle) {
  const auto h = static_cast<cudaStream_t>(const_cast<void*>(handle));
  return h == nullptr || h == cudaStreamLegacy || h == cudaStreamPerThread;
}

namespace {

/// The calling thread's current device (cudaSetDevice): per thread, as CUDA's runtime keeps it.
thread_local int t_device = 0;

struct Stream {
  tsan::QuietMutex mu;   // one host thread in its context at a time
  void* ctx = nullptr;   // the TSan context its work runs in
  int device = 0;        // the device current where it was created
  bool blocking = true;  // ordered with the legacy default stream
  char enqueue = 0;      // released by the host at each enqueue, acquired by the context
  char done = 0;         // released by the context after each piece of work
};

/// An event: what its streams had done at its records, released into one sync byte (a later
/// record on the same stream holds the earlier ones' history anyway). No reference-counted
/// pointers here or in Streams: their counts are atomics the detector sees, which would order
/// every host thread that touches them.
struct Event {
  char at = 0;
  std::atomic<bool> recorded{false};  // relaxed: whether a wait has anything to acquire
};

struct Streams {
  tsan::QuietMutex mu;
  std::set<Stream*> all;  // the live created streams (the legacy stream is apart)
  // Destroyed streams are kept (their Stream, not their context): a wait that listed a stream
  // may still reach it after another thread destroyed it.
  std::vector<Stream*> destroyed;
  // What destroyed streams had done (CUDA completes a destroyed stream's work, and the device's
  // synchronization still waits for it): every stream's, and the blocking ones' (which the
  // legacy stream waits for).
  char retired = 0, retired_blocking = 0;
};
Streams& streams() {
  static Streams* s = new Streams;
  return *s;
}

Stream& legacy_stream() {
  static Stream* s = new Stream;
  return *s;
}

Stream& stream_of(void* handle) {
  return is_legacy_stream(handle) ? legacy_stream() : *static_cast<Stream*>(handle);
}

/// The host waits for what `st` has done so far.
void host_waits(Stream& st) {
  std::lock_guard<tsan::QuietMutex> lock(st.mu);
  tsan::acquire(&st.done);
}

/// The live created streams (only the blocking ones: `blocking_only`).
std::vector<Stream*> created_streams(bool blocking_only) {
  std::lock_guard<tsan::QuietMutex> lock(streams().mu);
  std::vector<Stream*> out;
  for (Stream* st : streams().all) {
    if (!blocking_only || st->blocking) out.push_back(st);
  }
  return out;
}

void host_waits_for_all() {
  host_waits(legacy_stream());
  for (Stream* st : created_streams(false)) host_waits(*st);
  tsan::acquire(&streams().retired);
}

}  // namespace

void on_stream(void* handle, const std::function<void()>& work) {
  Stream& st = stream_of(handle);
  // The legacy default stream and the blocking streams wait for each other's earlier work: the
  // streams to wait for are listed here, on the host (a lock taken in the stream's context would
  // carry its history to the next host thread that takes it).
  std::vector<Stream*> blocking;
  if (&st == &legacy_stream()) blocking = created_streams(true);
  std::lock_guard<tsan::QuietMutex> lock(st.mu);
  void* const host = tsan::current();
  tsan::release(&st.enqueue);
  if (!st.ctx) st.ctx = tsan::create("CUDA stream");
  // In the stream's context, the work's own plumbing (its closure, the scheduler, on the host
  // thread's stack and heap, which the host reuses without waiting for the stream) is hidden
  // from the detector; only its device accesses count (device_memmove, _memset and _touch
  // below, and the kernels' threads, each a context of its own). Back, made on the host, ends
  // it: the stream's history released for later waits, the host's context back.
  struct Back {
    char* done;
    void* host;
    ~Back() {
      tsan::release(done);
      tsan::ignore_end();
      tsan::switch_to(host);
    }
  } back{&st.done, host};
  tsan::switch_to(st.ctx);
  tsan::ignore_begin();
  tsan::acquire(&st.enqueue);
  if (&st == &legacy_stream()) {
    for (Stream* b : blocking) tsan::acquire(&b->done);
    tsan::acquire(&streams().retired_blocking);
  } else if (st.blocking) {
    tsan::acquire(&legacy_stream().done);
  }
  work();
}

void device_memmove(void* dst, const void* src, size_t n) {
  tsan::ignore_end();
  std::memmove(dst, src, n);
  tsan::ignore_begin();
}

void device_memset(void* dst, int value, size_t n) {
  tsan::ignore_end();
  std::memset(dst, value, n);
  tsan::ignore_begin();
}

void device_touch(const void* p, size_t n, bool write) {
  if (n == 0) return;
  tsan::ignore_end();
  tsan::access(p, n, write);
  tsan::ignore_begin();
}

std::vector<MemoryRange> memory_ranges() {
  Memory& m = memory();
  std::lock_guard<tsan::QuietMutex> lock(m.mu);
  std::vector<MemoryRange> out;
  out.reserve(m.live.size() + m.pinned.size());
  for (const auto& [user, al] : m.live) out.push_back({user, user + al.size, true});
  for (const auto& [at, size] : m.pinned) out.push_back({at, at + size, false});
  std::sort(out.begin(), out.end(),
            [](const MemoryRange& a, const MemoryRange& b) { return a.lo < b.lo; });
  return out;
}

void describe_address(const void* addr, char* buf, size_t n) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(addr);
  Memory& m = memory();
  std::unique_lock<tsan::QuietMutex> lock(m.mu, std::try_to_lock);
  if (!lock.owns_lock()) {
    std::snprintf(buf, n, "(the allocation table is busy)");
    return;
  }
  for (const auto& [user, al] : m.live) {
    const uintptr_t lo = reinterpret_cast<uintptr_t>(al.map), hi = lo + al.map_size;
    if (a < lo || a >= hi) continue;
    if (a >= user + al.size) {
      std::snprintf(buf, n, "%zu bytes past the end of a %zu-byte device allocation at %p",
                    size_t(a - user - al.size), al.size, reinterpret_cast<void*>(user));
    } else if (a < user) {
      std::snprintf(buf, n, "%zu bytes before the start of a %zu-byte device allocation at %p",
                    size_t(user - a), al.size, reinterpret_cast<void*>(user));
    } else {
      std::snprintf(buf, n, "inside a %zu-byte device allocation at %p", al.size,
                    reinterpret_cast<void*>(user));
    }
    return;
  }
  std::snprintf(buf, n, "not in or next to any device allocation");
}

std::string check_canaries() {
  // Bookkeeping, hidden from the race detector: the host checks bytes a kernel of any stream
  // may have written (out of bounds) without waiting for the stream.
  tsan::Ignore ig;
  Memory& m = memory();
  std::lock_guard<tsan::QuietMutex> lock(m.mu);
  for (const auto& [user, al] : m.live) {
    const unsigned char* p = reinterpret_cast<const unsigned char*>(user);
    for (size_t i = al.size; i < al.padded; ++i) {
      if (p[i] != kPoison) {
        std::ostringstream os;
        os << "a kernel wrote " << (i - al.size) << " bytes past the end of a " << al.size
           << "-byte device allocation at " << reinterpret_cast<const void*>(p)
           << " (out of bounds)";
        return os.str();
      }
    }
  }
  return "";
}

namespace {

void on_fault(int sig, siginfo_t* info, void*) {
  char where[256], launch[512], msg[1024];
  tsan::ignore_begin();  // the handler reads emulator state from whichever fiber faulted
  describe_address(info->si_addr, where, sizeof where);
  describe_launch(launch, sizeof launch);
  std::snprintf(msg, sizeof msg,
                "\nnuri emulator: out-of-bounds access (signal %d) at address %p: %s; in %s\n",
                sig, info->si_addr, where, launch);
  ssize_t ignored = write(2, msg, std::strlen(msg));
  (void)ignored;
  signal(sig, SIG_DFL);
  raise(sig);
}

}  // namespace

void install_fault_handler() {
  static thread_local bool stack_set = false;
  if (!stack_set) {  // the handler runs on its own stack: a fiber's stack may be the fault
    static thread_local char alt[64 * 1024];
    stack_t ss{};
    ss.ss_sp = alt;
    ss.ss_size = sizeof alt;
    sigaltstack(&ss, nullptr);
    stack_set = true;
  }
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa {};
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, nullptr);
    sigaction(SIGBUS, &sa, nullptr);
  });
}

/// The emulated device's setting `var`: `fallback` when unset or empty, else an integer from lo
/// to hi (an error naming the variable and what it sets otherwise).
static long device_setting(const char* var, long fallback, long lo, long hi, const char* what) {
  const char* env = std::getenv(var);
  if (!env || !*env) return fallback;
  char* end = nullptr;
  const long v = std::strtol(env, &end, 10);
  NURI_CHECK(end && *end == '\0' && v >= lo && v <= hi, var, "='", env,
             "': the emulated device's ", what, " must be an integer from ", lo, " to ", hi);
  return v;
}

/// Shared memory per SM of the emulated device: 228 KiB (an H100), or NURI_EMU_SMEM_PER_SM
/// bytes (32768 to 233472), so tests can run the choices host code makes for GPUs with less (an
/// RTX 3090/4090: 102400). A block may have 1 KiB less (the driver's reserve).
size_t emulated_smem_per_sm() {
  return size_t(device_setting("NURI_EMU_SMEM_PER_SM", 228 * 1024, 32768, 228 * 1024,
                               "shared memory per SM in bytes"));
}

/// The SM count the emulated device reports: 132 (an H100 SXM), or NURI_EMU_SMS (1 to 1024), so
/// tests can run a persistent kernel's blocks over several work tiles each.
static int emulated_sms() {
  return int(device_setting("NURI_EMU_SMS", 132, 1, 1024, "SM count"));
}

/// How many devices the emulator has: 1, or NURI_EMU_DEVICES (1 to 16), so tests can run a
/// backend on a device other than the one a new thread starts on.
static int emulated_devices() {
  return int(device_setting("NURI_EMU_DEVICES", 1, 1, 16, "device count"));
}

int current_device() { return t_device; }

int stream_device(const void* handle) {
  return is_legacy_stream(handle) ? t_device : static_cast<const Stream*>(handle)->device;
}

}  // namespace nuri::emu

using nuri::emu::fail;
using nuri::emu::find;
using nuri::emu::memory;

extern "C" {

cudaError_t cudaMalloc(void** ptr, size_t size) {
  if (!ptr) return fail(cudaErrorInvalidValue);
  if (size == 0) {
    *ptr = nullptr;
    return cudaSuccess;
  }
  const size_t page = nuri::emu::page_size();
  const size_t padded = (size + nuri::emu::kAlign - 1) / nuri::emu::kAlign * nuri::emu::kAlign;
  const size_t body = (padded + page - 1) / page * page;
  const size_t total = body + 2 * page;
  char* map = static_cast<char*>(
      mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  if (map == MAP_FAILED) return fail(cudaErrorMemoryAllocation);
  mprotect(map, page, PROT_NONE);
  mprotect(map + page + body, page, PROT_NONE);
  char* user = map + page + body - padded;  // the padded end touches the upper guard page
  std::memset(map + page, nuri::emu::kPoison, body);
  {
    std::lock_guard<nuri::emu::tsan::QuietMutex> lock(memory().mu);
    memory().live[reinterpret_cast<uintptr_t>(user)] = {map, total, size, padded};
  }
  *ptr = user;
  return cudaSuccess;
}

cudaError_t cudaFree(void* ptr) {
  if (!ptr) return cudaSuccess;
  nuri::emu::host_waits_for_all();  // cudaFree synchronizes the device
  nuri::emu::Allocation al;
  {
    std::lock_guard<nuri::emu::tsan::QuietMutex> lock(memory().mu);
    auto it = memory().live.find(reinterpret_cast<uintptr_t>(ptr));
    if (it == memory().live.end()) return fail(cudaErrorInvalidDevicePointer);
    al = it->second;
    memory().live.erase(it);
  }
  munmap(al.map, al.map_size);
  return cudaSuccess;
}

cudaError_t cudaMallocHost(void** ptr, size_t size) {
  *ptr = std::malloc(size ? size : 1);
  if (!*ptr) return fail(cudaErrorMemoryAllocation);
  std::lock_guard<nuri::emu::tsan::QuietMutex> lock(memory().mu);
  memory().pinned[reinterpret_cast<uintptr_t>(*ptr)] = size;
  return cudaSuccess;
}
cudaError_t cudaFreeHost(void* ptr) {
  nuri::emu::host_waits_for_all();  // as cudaFree: no copy may still read it
  {
    std::lock_guard<nuri::emu::tsan::QuietMutex> lock(memory().mu);
    memory().pinned.erase(reinterpret_cast<uintptr_t>(ptr));
  }
  std::free(ptr);
  return cudaSuccess;
}

namespace nuri::emu {
namespace {

/// A copy on stream `handle` (work ordered as the stream orders it); `sync_call`: cudaMemcpy
/// rather than cudaMemcpyAsync. As the driver's "API synchronization behavior" says: a copy to
/// the host returns complete when it is synchronous or the host memory is pageable (not
/// cudaMallocHost); one from pageable memory to the device stages the source at the call (a
/// synchronous one after waiting for the stream) and the stream writes the destination later;
/// one from pinned memory is complete at return when synchronous; device to device is never.
cudaError_t copy(void* dst, const void* src, size_t count, cudaMemcpyKind kind, void* handle,
                 bool sync_call) {
  if (count == 0) return cudaSuccess;
  bool dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  bool src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  bool pinned_host = false;
  {
    std::lock_guard<nuri::emu::tsan::QuietMutex> lock(memory().mu);
    if (kind == cudaMemcpyDefault) {
      dst_dev = find(dst, 1) != nullptr;
      src_dev = find(src, 1) != nullptr;
    }
    if ((dst_dev && !find(dst, count)) || (src_dev && !find(src, count))) {
      return fail(cudaErrorInvalidValue);  // a device range outside its allocation
    }
    const void* host_side = !dst_dev ? dst : src;
    const uintptr_t a = reinterpret_cast<uintptr_t>(host_side);
    auto it = memory().pinned.upper_bound(a);
    if (it != memory().pinned.begin()) {
      --it;
      pinned_host = a + count <= it->first + it->second;
    }
  }
  if (!dst_dev && !src_dev) {  // host to host: no stream involved
    std::memmove(dst, src, count);
    return cudaSuccess;
  }
  Stream& st = stream_of(handle);
  if (dst_dev && !src_dev && !pinned_host) {
    if (sync_call) host_waits(st);
    // The host reads its memory now (the driver stages it); the stream writes the destination.
    // (The bytes move at once, hidden: a staging copy would grow the process by the copy.)
    tsan::access(src, count, false);
    on_stream(handle, [&] {
      device_touch(dst, count, true);
      std::memmove(dst, src, count);
    });
    return cudaSuccess;
  }
  on_stream(handle, [&] { device_memmove(dst, src, count); });
  const bool to_host = !dst_dev;
  if (to_host ? sync_call || !pinned_host : !src_dev && sync_call) host_waits(st);
  return cudaSuccess;
}

cudaError_t set(void* dst, int value, size_t count, void* handle) {
  if (count == 0) return cudaSuccess;
  {
    std::lock_guard<nuri::emu::tsan::QuietMutex> lock(memory().mu);
    if (!find(dst, count)) return fail(cudaErrorInvalidValue);
  }
  on_stream(handle, [&] { device_memset(dst, value, count); });  // asynchronous to the host
  return cudaSuccess;
}

}  // namespace
}  // namespace nuri::emu

cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, enum cudaMemcpyKind kind) {
  return nuri::emu::copy(dst, src, count, kind, nullptr, true);
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, enum cudaMemcpyKind kind,
                            cudaStream_t stream) {
  return nuri::emu::copy(dst, src, count, kind, stream, false);
}
cudaError_t cudaMemset(void* dst, int value, size_t count) {
  return nuri::emu::set(dst, value, count, nullptr);
}
cudaError_t cudaMemsetAsync(void* dst, int value, size_t count, cudaStream_t stream) {
  return nuri::emu::set(dst, value, count, stream);
}

cudaError_t cudaStreamCreate(cudaStream_t* s) { return cudaStreamCreateWithFlags(s, 0); }
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned int flags) {
  auto* st = new nuri::emu::Stream;
  st->blocking = !(flags & cudaStreamNonBlocking);
  st->device = nuri::emu::t_device;
  {
    std::lock_guard<nuri::emu::tsan::QuietMutex> lock(nuri::emu::streams().mu);
    nuri::emu::streams().all.insert(st);
  }
  *s = reinterpret_cast<cudaStream_t>(st);
  return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t s) {
  namespace emu = nuri::emu;
  if (emu::is_legacy_stream(s)) return fail(cudaErrorInvalidResourceHandle);
  auto* const st = reinterpret_cast<emu::Stream*>(s);
  {
    std::lock_guard<emu::tsan::QuietMutex> lock(emu::streams().mu);
    if (!emu::streams().all.erase(st)) return fail(cudaErrorInvalidResourceHandle);
    emu::streams().destroyed.push_back(st);  // kept: see Streams
  }
  emu::forget_stream(s);
  // Its work stays what the device's synchronization (and, for a blocking stream, the legacy
  // stream) waits for.
  std::lock_guard<emu::tsan::QuietMutex> lock(st->mu);
  if (st->ctx) {
    void* const host = emu::tsan::current();
    const bool blocking = st->blocking;  // read here: the stream's context reads nothing
    char* const retired = &emu::streams().retired;
    char* const retired_blocking = &emu::streams().retired_blocking;
    emu::tsan::switch_to(st->ctx);
    emu::tsan::release(retired);
    if (blocking) emu::tsan::release(retired_blocking);
    emu::tsan::switch_to(host);
    emu::tsan::destroy(st->ctx);
    st->ctx = nullptr;
  }
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  nuri::emu::host_waits(nuri::emu::stream_of(s));
  return cudaSuccess;
}
cudaError_t cudaStreamQuery(cudaStream_t s) {  // the work ran when it was queued: complete
  nuri::emu::host_waits(nuri::emu::stream_of(s));
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize(void) {
  nuri::emu::host_waits_for_all();
  return cudaSuccess;
}
cudaError_t cudaEventCreate(cudaEvent_t* e) {
  *e = reinterpret_cast<cudaEvent_t>(new nuri::emu::Event);
  return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned int) { return cudaEventCreate(e); }
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  delete reinterpret_cast<nuri::emu::Event*>(e);
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
  auto* ev = reinterpret_cast<nuri::emu::Event*>(e);
  char* const at = &ev->at;
  nuri::emu::on_stream(s, [at] { nuri::emu::tsan::release(at); });
  ev->recorded.store(true, std::memory_order_relaxed);
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t e) {
  auto* ev = reinterpret_cast<nuri::emu::Event*>(e);
  if (ev->recorded.load(std::memory_order_relaxed)) nuri::emu::tsan::acquire(&ev->at);
  return cudaSuccess;
}
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned int) {
  auto* ev = reinterpret_cast<nuri::emu::Event*>(e);
  if (ev->recorded.load(std::memory_order_relaxed)) {
    char* const at = &ev->at;
    nuri::emu::on_stream(s, [at] { nuri::emu::tsan::acquire(at); });
  }
  return cudaSuccess;
}
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t, cudaEvent_t) {
  *ms = 0.f;  // the emulator measures nothing
  return cudaSuccess;
}

cudaError_t cudaGetDeviceCount(int* n) {
  *n = nuri::emu::emulated_devices();
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int d) {
  if (d < 0 || d >= nuri::emu::emulated_devices()) return fail(cudaErrorInvalidDevice);
  nuri::emu::t_device = d;
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* d) {
  *d = nuri::emu::t_device;
  return cudaSuccess;
}

/// An sm_90-like device (H100 SXM numbers), so host code that sizes launches sees real limits.
cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp* p, int device) {
  if (device < 0 || device >= nuri::emu::emulated_devices()) return fail(cudaErrorInvalidDevice);
  std::memset(p, 0, sizeof *p);
  std::snprintf(p->name, sizeof p->name, "nuri CUDA emulator (sm_90-like)");
  p->major = 9;
  p->minor = 0;
  p->multiProcessorCount = nuri::emu::emulated_sms();
  p->warpSize = 32;
  p->maxThreadsPerBlock = 1024;
  p->maxThreadsDim[0] = 1024;
  p->maxThreadsDim[1] = 1024;
  p->maxThreadsDim[2] = 64;
  p->maxGridSize[0] = 2147483647;
  p->maxGridSize[1] = 65535;
  p->maxGridSize[2] = 65535;
  p->sharedMemPerBlock = 48 * 1024;
  p->sharedMemPerMultiprocessor = nuri::emu::emulated_smem_per_sm();
  p->sharedMemPerBlockOptin = p->sharedMemPerMultiprocessor - 1024;
  p->regsPerBlock = 65536;
  p->maxThreadsPerMultiProcessor = 2048;
  p->totalGlobalMem = size_t(80) << 30;
  p->l2CacheSize = 50 << 20;
  return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void*, enum cudaFuncAttribute, int) { return cudaSuccess; }

cudaError_t cudaGetLastError(void) {
  const cudaError_t e = nuri::emu::last_error();
  nuri::emu::last_error() = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError(void) { return nuri::emu::last_error(); }

const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    default: return "cudaError (emulated)";
  }
}
const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument (emulator: a device range outside its allocation?)";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    default: return "unknown error (emulated runtime)";
  }
}

}  // extern "C"
