// Boost.Context fibers for the emulator (fiber.h), compiled without TSan instrumentation
// (CMakeLists.txt: -fno-sanitize=thread for this file).
#include "emu/fiber.h"

#include <sys/mman.h>
#include <unistd.h>

#include <boost/context/fiber.hpp>
#include <vector>

#include "emu/tsan.h"
#include "nuri/core/error.h"

namespace nuri::emu::fiber {
namespace ctx = boost::context;

namespace {
constexpr size_t kStackBytes = 256 * 1024;  // register tiles of attention kernels fit
}

class Stacks {
 public:
  ~Stacks() {
    for (auto* list : {&free_, &used_}) {
      for (auto& sc : *list) munmap(static_cast<char*>(sc.sp) - sc.size, sc.size);
    }
  }
  ctx::stack_context allocate() {
    ctx::stack_context sc;
    if (!free_.empty()) {
      sc = free_.back();
      free_.pop_back();
      return sc;
    }
    const size_t page = size_t(sysconf(_SC_PAGESIZE));
    const size_t total = kStackBytes + page;
    void* base = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    NURI_CHECK(base != MAP_FAILED, "emulator: cannot map a fiber stack of ", total,
               " bytes (too many emulated threads in one launch?)");
    mprotect(base, page, PROT_NONE);  // the guard page: a stack overflow faults
    sc.size = total;
    sc.sp = static_cast<char*>(base) + total;
    return sc;
  }
  void deallocate(ctx::stack_context& sc) { used_.push_back(sc); }
  void recycle() {
    free_.insert(free_.end(), used_.begin(), used_.end());
    used_.clear();
  }

 private:
  std::vector<ctx::stack_context> free_, used_;
};

Stacks* new_stacks() { return new Stacks; }
void delete_stacks(Stacks* s) { delete s; }
void recycle(Stacks* s) { s->recycle(); }

namespace {
struct PooledStack {
  Stacks* pool;
  ctx::stack_context allocate() { return pool->allocate(); }
  void deallocate(ctx::stack_context& sc) noexcept { pool->deallocate(sc); }
};
}  // namespace

struct Fiber {
  ctx::fiber self;  // resumes the fiber
  ctx::fiber back;  // resumes the scheduler while the fiber runs
  bool ended = false;
};

Fiber* create(Stacks* stacks, void (*entry)(void*), void* arg, void* sched_tsan) {
  auto* f = new Fiber;
  f->self = ctx::fiber(std::allocator_arg, PooledStack{stacks},
                       [f, entry, arg, sched_tsan](ctx::fiber&& back) -> ctx::fiber {
                         f->back = std::move(back);
                         entry(arg);
                         f->ended = true;
                         tsan::switch_to(sched_tsan);
                         return std::move(f->back);
                       });
  return f;
}

bool resume(Fiber* f, void* tsan_fiber, bool first) {
  tsan::switch_to(tsan_fiber);
  if (first) tsan::ignore_begin();  // ended by the fiber's first statement
  f->self = std::move(f->self).resume();
  return f->ended;
}

void suspend(Fiber* f, void* sched_tsan) {
  tsan::switch_to(sched_tsan);
  f->back = std::move(f->back).resume();
}

void destroy(Fiber* f, void* tsan_fiber, void* sched_tsan) {
  if (f->self) {  // not ended: unwind its stack (kernel frames only)
    tsan::switch_to(tsan_fiber);
    tsan::ignore_begin();
    f->self = ctx::fiber();
    tsan::ignore_end();
    tsan::switch_to(sched_tsan);
  }
  delete f;
}

}  // namespace nuri::emu::fiber
