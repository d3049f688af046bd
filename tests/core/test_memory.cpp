// Memory categories and the limit (issue #21): every tensor's bytes are counted under the
// MemoryScope around its allocation; a limit refuses an allocation that would pass it, with the
// bytes in use by category in the message; a counting view of an allocator obeys the limit and
// the categories of the allocator under it; NURI_MAX_DEVICE_BYTES sets the limit of new backends.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "nuri/backend/backend.h"
#include "nuri/core/allocator.h"
#include "nuri/core/tensor.h"
#include "test_util.h"

namespace nuri {
namespace {

TEST(Memory, AllocationsAreCountedUnderTheirScope) {
  auto alloc = std::make_shared<CpuAllocator>();
  Tensor a = Tensor::empty({100}, DType::f32, alloc);  // no scope: buffers
  {
    MemoryScope s(MemoryCategory::gradients);
    Tensor g = Tensor::empty({50}, DType::f32, alloc);
    {
      MemoryScope inner(MemoryCategory::optimizer);
      Tensor o = Tensor::empty({25}, DType::f32, alloc);
      EXPECT_EQ(alloc->category_bytes(MemoryCategory::optimizer), 100);
    }
    Tensor g2 = Tensor::empty({10}, DType::f32, alloc);  // the outer scope again
    EXPECT_EQ(alloc->category_bytes(MemoryCategory::gradients), 240);
    EXPECT_EQ(alloc->category_bytes(MemoryCategory::optimizer), 0);  // freed with its tensor
  }
  EXPECT_EQ(alloc->category_bytes(MemoryCategory::buffers), 400);
  EXPECT_EQ(alloc->category_bytes(MemoryCategory::gradients), 0);
  EXPECT_EQ(alloc->usage_report(), "parameters 0.0 MiB, gradients 0.0 MiB, optimizer 0.0 MiB, "
                                   "activations 0.0 MiB, buffers 0.0 MiB");
}

TEST(Memory, TheLimitRefusesWithTheBytesByCategory) {
  auto alloc = std::make_shared<CpuAllocator>();
  alloc->set_limit(3 << 20);
  MemoryScope s(MemoryCategory::parameters);
  Tensor p = Tensor::empty({1 << 19}, DType::f32, alloc);  // 2 MiB
  const std::string msg = test::error_of([&] {
    MemoryScope act(MemoryCategory::activations);
    Tensor a = Tensor::empty({1 << 18}, DType::f32, alloc);  // 1 MiB more would pass 3 MiB
    Tensor b = Tensor::empty({1}, DType::f32, alloc);
  });
  EXPECT_NE(msg.find("cpu: allocating 0.0 MiB of activations would pass the memory limit of "
                     "3.0 MiB (NURI_MAX_DEVICE_BYTES); in use: parameters 2.0 MiB, gradients "
                     "0.0 MiB, optimizer 0.0 MiB, activations 1.0 MiB"), std::string::npos)
      << msg;
  EXPECT_EQ(alloc->category_bytes(MemoryCategory::activations), 0);  // nothing lost
  // A counting view: its own bytes, the limit and the categories of the allocator under it.
  auto view = std::make_shared<CountingAllocator>(alloc);
  {
    MemoryScope g(MemoryCategory::gradients);
    Tensor t = Tensor::empty({1 << 18}, DType::f32, view);
    EXPECT_EQ(view->stats().current_bytes, 1 << 20);
    EXPECT_EQ(alloc->category_bytes(MemoryCategory::gradients), 1 << 20);
    EXPECT_NE(test::error_of([&] { Tensor u = Tensor::empty({1}, DType::f32, view); })
                  .find("would pass the memory limit"), std::string::npos);
  }
  EXPECT_EQ(view->stats().current_bytes, 0);
  EXPECT_EQ(view->stats().peak_bytes, 1 << 20);
  EXPECT_EQ(alloc->category_bytes(MemoryCategory::gradients), 0);
}

TEST(Memory, TheEnvironmentSetsNewBackendsLimit) {
  EXPECT_EQ(parse_bytes("4000", "X"), 4000);
  EXPECT_EQ(parse_bytes("512M", "X"), int64_t(512) << 20);
  EXPECT_EQ(parse_bytes("1.5G", "X"), int64_t(3) << 29);
  EXPECT_NE(test::error_of([] { parse_bytes("lots", "NURI_MAX_DEVICE_BYTES"); })
                .find("NURI_MAX_DEVICE_BYTES='lots' is not a number of bytes"), std::string::npos);
  ::setenv("NURI_MAX_DEVICE_BYTES", "64M", 1);
  EXPECT_EQ(make_backend("cpu")->allocator()->limit(), int64_t(64) << 20);
  ::unsetenv("NURI_MAX_DEVICE_BYTES");
  EXPECT_EQ(make_backend("cpu")->allocator()->limit(), 0);
}

}  // namespace
}  // namespace nuri
