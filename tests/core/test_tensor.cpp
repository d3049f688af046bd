// Tensor views, slices and copies share or copy storage as documented; the CPU allocator is
// aligned and counts bytes; misuse raises nuri::Error with the values.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>

#include "nuri/core/tensor.h"

namespace nuri {
namespace {

Tensor iota(const Shape& s) {
  Tensor t = Tensor::empty(s, DType::f32);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = float(i);
  return t;
}

TEST(Tensor, ViewSliceSelectShareStorage) {
  Tensor t = iota({2, 3, 4});
  EXPECT_TRUE(t.is_contiguous());
  EXPECT_EQ(t.strides(), (Shape{12, 4, 1}));
  Tensor v = t.view({6, -1});
  EXPECT_EQ(v.shape(), (Shape{6, 4}));
  Tensor s = t.slice(2, 1, 3);  // [2, 3, 2], strided
  EXPECT_FALSE(s.is_contiguous());
  EXPECT_EQ(s.data<float>()[0], 1.f);
  Tensor row = t.select(0, 1).select(0, 2);  // t[1, 2, :]
  EXPECT_EQ(row.shape(), (Shape{4}));
  EXPECT_EQ(row.data<float>()[3], 23.f);
  row.data<float>()[0] = -1.f;  // writes through to t
  EXPECT_EQ(t.data<float>()[20], -1.f);
  Tensor c = s.clone();
  EXPECT_TRUE(c.is_contiguous());
  const float want[] = {1, 2, 5, 6, 9, 10, 13, 14, 17, 18, 21, 22};
  for (int i = 0; i < 12; ++i) EXPECT_EQ(c.data<float>()[i], want[i]) << i;
  c.data<float>()[0] = 100.f;  // a clone does not share
  EXPECT_EQ(t.data<float>()[1], 1.f);
}

TEST(Tensor, CopyIntoStridedViewAndFill) {
  Tensor t = Tensor::zeros({3, 4});
  Tensor col = t.slice(1, 2, 3);  // [3, 1]
  col.copy_from(iota({3, 1}));
  EXPECT_EQ(t.data<float>()[2], 0.f);
  EXPECT_EQ(t.data<float>()[6], 1.f);
  EXPECT_EQ(t.data<float>()[10], 2.f);
  t.slice(0, 1, 2).fill_(7.0);
  for (int j = 0; j < 4; ++j) EXPECT_EQ(t.data<float>()[4 + j], 7.f);
  Tensor h = Tensor::zeros({2}, DType::bf16);
  h.fill_(1.5);
  EXPECT_EQ(h.data<bf16_t>()[1].bits, 0x3fc0);
}

TEST(Tensor, FromBlobWrapsWithoutCopying) {
  float buf[6] = {1, 2, 3, 4, 5, 6};
  Tensor t = Tensor::from_blob(buf, {2, 3}, DType::f32, Device::cpu());
  t.data<float>()[4] = 50.f;
  EXPECT_EQ(buf[4], 50.f);
  Tensor tr = Tensor::from_blob(buf, {3, 2}, DType::f32, Device::cpu(), nullptr, {1, 3});
  EXPECT_EQ(tr.clone().data<float>()[1], 4.f);  // transpose view: tr[0][1] = buf[3]
  // A reversed view (negative stride, as NumPy's a[::-1] exports it) spans the same 6 floats.
  Tensor rev = Tensor::from_blob(buf + 5, {6}, DType::f32, Device::cpu(), nullptr, {-1});
  EXPECT_EQ(rev.storage()->bytes(), 6 * sizeof(float));
  EXPECT_EQ(rev.clone().data<float>()[0], 6.f);
  EXPECT_EQ(rev.clone().data<float>()[5], 1.f);
}

TEST(Tensor, MisuseRaisesErrorsWithValues) {
  Tensor t = iota({2, 3});
  auto msg = [](auto&& f) {
    try {
      f();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(msg([&] { t.view({4, 2}); }).find("(4, 2) has 8 elements"), std::string::npos);
  EXPECT_NE(msg([&] { t.slice(1, 2, 5); }).find("slice [2, 5) out of range for dimension 1 of size 3"),
            std::string::npos);
  EXPECT_NE(msg([&] { t.data<int32_t>(); }).find("dtype f32, accessed as i32"), std::string::npos);
  EXPECT_NE(msg([&] { t.slice(1, 0, 2).view({4}); }).find("contiguous"), std::string::npos);
  EXPECT_NE(msg([&] { Tensor::empty({2, -3}, DType::f32); }).find("negative"), std::string::npos);
  EXPECT_NE(msg([&] { Tensor().raw(); }).find("undefined"), std::string::npos);
  // The file:line of the check is part of the message.
  EXPECT_NE(msg([&] { t.size(5); }).find("tensor.cpp:"), std::string::npos);
}

TEST(Allocator, AlignedAndCountsCurrentAndPeak) {
  auto alloc = std::make_shared<CpuAllocator>();
  {
    Tensor a = Tensor::empty({100}, DType::f32, alloc);
    Tensor b = Tensor::empty({3}, DType::bf16, alloc);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(a.raw()) % 64, 0u);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(b.raw()) % 64, 0u);
    EXPECT_EQ(alloc->stats().current_bytes, 400 + 6);
    EXPECT_EQ(alloc->stats().num_allocs, 2);
    Tensor view = a.view({10, 10});  // views allocate nothing
    EXPECT_EQ(alloc->stats().num_allocs, 2);
  }
  EXPECT_EQ(alloc->stats().current_bytes, 0);
  EXPECT_EQ(alloc->stats().peak_bytes, 406);
  alloc->reset_peak();
  EXPECT_EQ(alloc->stats().peak_bytes, 0);
}

}  // namespace
}  // namespace nuri
