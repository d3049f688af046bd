// Tensor: a typed, strided view of shared storage. Copying a Tensor copies the handle, not the
// data (as ATen does); views and slices share storage. Shapes and strides are in elements.
// Ops below the model take Tensors and validate shape, dtype and device at their entry.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "nuri/core/allocator.h"
#include "nuri/core/dtype.h"
#include "nuri/core/error.h"

namespace nuri {

using Shape = std::vector<int64_t>;

/// Owns one allocation. Freed through its allocator when the last Tensor referring to it goes,
/// unless it wraps external memory (then the owner's deleter runs, or nothing).
class Storage {
 public:
  Storage(std::shared_ptr<Allocator> alloc, size_t bytes);
  /// Wraps memory nuri does not own; `keep_alive` (may be null) is released with the storage.
  Storage(void* external, size_t bytes, Device device, std::shared_ptr<void> keep_alive);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }

 private:
  std::shared_ptr<Allocator> alloc_;
  void* data_ = nullptr;
  size_t bytes_ = 0;
  Device device_;
  MemoryCategory category_ = MemoryCategory::buffers;
  std::shared_ptr<void> keep_alive_;
};

std::string shape_str(const Shape& s);
int64_t shape_numel(const Shape& s);

class Tensor {
 public:
  Tensor() = default;

  /// New uninitialized contiguous tensor from `alloc` (default: the CPU allocator).
  static Tensor empty(const Shape& shape, DType dtype, std::shared_ptr<Allocator> alloc = nullptr);
  /// New contiguous tensor of zeros on the CPU.
  static Tensor zeros(const Shape& shape, DType dtype = DType::f32, std::shared_ptr<Allocator> alloc = nullptr);
  /// Wraps external memory without copying (e.g. a NumPy array); strides default to contiguous.
  static Tensor from_blob(void* data, const Shape& shape, DType dtype, Device device,
                          std::shared_ptr<void> keep_alive = nullptr, Shape strides = {});

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }
  int64_t dim() const { return int64_t(shape_.size()); }
  /// Size of dimension d; negative d counts from the end.
  int64_t size(int64_t d) const;
  int64_t stride(int64_t d) const;
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype_); }
  DType dtype() const { return dtype_; }
  Device device() const;
  bool is_contiguous() const;
  int64_t offset() const { return offset_; }
  const std::shared_ptr<Storage>& storage() const { return storage_; }

  /// Untyped pointer to element 0 of this view.
  void* raw() const;
  /// Typed pointer to element 0; checks that T matches dtype().
  template <typename T>
  T* data() const {
    NURI_CHECK(DTypeOf<T>::value == dtype_, "tensor has dtype ", dtype_name(dtype_),
               ", accessed as ", dtype_name(DTypeOf<T>::value));
    return static_cast<T*>(raw());
  }

  /// Same storage, new shape; needs a contiguous tensor and the same element count. One
  /// dimension may be -1 (inferred).
  Tensor view(Shape shape) const;
  /// Elements [start, end) of dimension d (shares storage).
  Tensor slice(int64_t d, int64_t start, int64_t end) const;
  /// Removes dimension d by taking index i of it (shares storage).
  Tensor select(int64_t d, int64_t i) const;
  /// A new contiguous CPU tensor with the same values (CPU tensors only).
  Tensor clone() const;
  /// Copies values from `src` (same shape and dtype, both on the CPU; any strides).
  void copy_from(const Tensor& src) const;
  /// Sets every element to zero (CPU tensors only).
  void zero_() const;
  /// Sets every element to v converted to dtype() (CPU tensors only).
  void fill_(double v) const;

  /// Human-readable "Tensor[f32, (2, 3), cpu]".
  std::string str() const;

 private:
  std::shared_ptr<Storage> storage_;
  Shape shape_;
  Shape strides_;
  int64_t offset_ = 0;  // in elements
  DType dtype_ = DType::f32;
};

Shape contiguous_strides(const Shape& shape);

}  // namespace nuri
