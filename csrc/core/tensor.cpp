// Tensor handles, views and the few CPU-side conveniences (clone, copy, fill) the tests and the
// data path need. Compute ops live in backends, not here.
#include "nuri/core/tensor.h"

#include <cstdlib>
#include <cstring>
#include <sstream>

namespace nuri {

std::string Device::str() const {
  return type == DeviceType::cpu ? "cpu" : "cuda:" + std::to_string(index);
}

Storage::Storage(std::shared_ptr<Allocator> alloc, size_t bytes)
    : alloc_(std::move(alloc)), bytes_(bytes), device_(alloc_->device()),
      category_(current_memory_category()) {
  data_ = alloc_->allocate_tensor(bytes > 0 ? bytes : 1, category_);
}

Storage::Storage(void* external, size_t bytes, Device device, std::shared_ptr<void> keep_alive)
    : data_(external), bytes_(bytes), device_(device), keep_alive_(std::move(keep_alive)) {}

Storage::~Storage() {
  if (alloc_) alloc_->deallocate_tensor(data_, bytes_ > 0 ? bytes_ : 1, category_);
}

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << "(";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  if (s.size() == 1) os << ",";
  os << ")";
  return os.str();
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

Shape contiguous_strides(const Shape& shape) {
  Shape st(shape.size());
  int64_t s = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    st[i] = s;
    s *= shape[i];
  }
  return st;
}

static void check_shape(const Shape& shape) {
  for (int64_t d : shape) {
    NURI_CHECK(d >= 0, "tensor shape ", shape_str(shape), " has a negative dimension");
  }
}

Tensor Tensor::empty(const Shape& shape, DType dtype, std::shared_ptr<Allocator> alloc) {
  check_shape(shape);
  if (!alloc) alloc = default_cpu_allocator();
  Tensor t;
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  t.dtype_ = dtype;
  t.storage_ = std::make_shared<Storage>(std::move(alloc), size_t(shape_numel(shape)) * dtype_size(dtype));
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, std::shared_ptr<Allocator> alloc) {
  Tensor t = empty(shape, dtype, std::move(alloc));
  NURI_CHECK(t.device().is_cpu(), "Tensor::zeros makes CPU tensors; use Backend::zero on ",
             t.device().str());
  std::memset(t.raw(), 0, t.nbytes());
  return t;
}

Tensor Tensor::from_blob(void* data, const Shape& shape, DType dtype, Device device,
                         std::shared_ptr<void> keep_alive, Shape strides) {
  check_shape(shape);
  Tensor t;
  t.shape_ = shape;
  t.strides_ = strides.empty() ? contiguous_strides(shape) : std::move(strides);
  NURI_CHECK(t.strides_.size() == shape.size(), "from_blob: ", t.strides_.size(),
             " strides given for shape ", shape_str(shape));
  t.dtype_ = dtype;
  int64_t extent = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == 0) extent = 0;
  }
  if (extent) {  // elements spanned; negative strides (a reversed view) span backwards
    extent = 1;
    for (size_t i = 0; i < shape.size(); ++i) extent += (shape[i] - 1) * std::abs(t.strides_[i]);
  }
  t.storage_ = std::make_shared<Storage>(data, size_t(extent) * dtype_size(dtype), device,
                                         std::move(keep_alive));
  return t;
}

static int64_t wrap_dim(int64_t d, int64_t ndim, const char* what) {
  const int64_t w = d < 0 ? d + ndim : d;
  NURI_CHECK(w >= 0 && w < ndim, what, ": dimension ", d, " out of range for a ", ndim,
             "-d tensor");
  return w;
}

int64_t Tensor::size(int64_t d) const { return shape_[wrap_dim(d, dim(), "Tensor::size")]; }
int64_t Tensor::stride(int64_t d) const { return strides_[wrap_dim(d, dim(), "Tensor::stride")]; }

Device Tensor::device() const { return storage_ ? storage_->device() : Device::cpu(); }

bool Tensor::is_contiguous() const {
  int64_t s = 1;
  for (size_t i = shape_.size(); i-- > 0;) {
    if (shape_[i] != 1 && strides_[i] != s) return false;
    s *= shape_[i];
  }
  return true;
}

void* Tensor::raw() const {
  NURI_CHECK(storage_ != nullptr, "access to an undefined tensor");
  return static_cast<char*>(storage_->data()) + offset_ * int64_t(dtype_size(dtype_));
}

Tensor Tensor::view(Shape shape) const {
  NURI_CHECK(defined(), "view of an undefined tensor");
  NURI_CHECK(is_contiguous(), "view ", shape_str(shape), " needs a contiguous tensor, got shape ",
             shape_str(shape_), " strides ", shape_str(strides_));
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      NURI_CHECK(infer < 0, "view ", shape_str(shape), ": only one dimension may be -1");
      infer = int64_t(i);
    } else {
      NURI_CHECK(shape[i] >= 0, "view ", shape_str(shape), " has a negative dimension");
      known *= shape[i];
    }
  }
  if (infer >= 0) {
    NURI_CHECK(known > 0 && numel() % known == 0, "view ", shape_str(shape),
               " cannot hold ", numel(), " elements");
    shape[size_t(infer)] = numel() / known;
  }
  NURI_CHECK(shape_numel(shape) == numel(), "view ", shape_str(shape), " has ", shape_numel(shape),
             " elements but the tensor ", shape_str(shape_), " has ", numel());
  Tensor t = *this;
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  return t;
}

Tensor Tensor::slice(int64_t d, int64_t start, int64_t end) const {
  d = wrap_dim(d, dim(), "slice");
  NURI_CHECK(0 <= start && start <= end && end <= shape_[size_t(d)], "slice [", start, ", ", end,
             ") out of range for dimension ", d, " of size ", shape_[size_t(d)]);
  Tensor t = *this;
  t.offset_ += start * strides_[size_t(d)];
  t.shape_[size_t(d)] = end - start;
  return t;
}

Tensor Tensor::select(int64_t d, int64_t i) const {
  d = wrap_dim(d, dim(), "select");
  NURI_CHECK(0 <= i && i < shape_[size_t(d)], "select index ", i, " out of range for dimension ",
             d, " of size ", shape_[size_t(d)]);
  Tensor t = *this;
  t.offset_ += i * strides_[size_t(d)];
  t.shape_.erase(t.shape_.begin() + d);
  t.strides_.erase(t.strides_.begin() + d);
  return t;
}

// Walks every element of `t` in row-major order, calling f(element byte offset from raw()).
template <typename F>
static void for_each_offset(const Tensor& t, F&& f) {
  const int64_t n = t.numel();
  if (n == 0) return;
  const int64_t es = int64_t(dtype_size(t.dtype()));
  std::vector<int64_t> idx(size_t(t.dim()), 0);
  for (int64_t k = 0; k < n; ++k) {
    int64_t off = 0;
    for (int64_t d = 0; d < t.dim(); ++d) off += idx[size_t(d)] * t.strides()[size_t(d)];
    f(off * es);
    for (int64_t d = t.dim() - 1; d >= 0; --d) {
      if (++idx[size_t(d)] < t.shape()[size_t(d)]) break;
      idx[size_t(d)] = 0;
    }
  }
}

void Tensor::copy_from(const Tensor& src) const {
  NURI_CHECK(defined() && src.defined(), "copy_from: undefined tensor");
  NURI_CHECK(device().is_cpu() && src.device().is_cpu(), "copy_from works on CPU tensors; got ",
             src.device().str(), " -> ", device().str(), " (use Backend::copy)");
  NURI_CHECK(shape_ == src.shape_ && dtype_ == src.dtype_, "copy_from: source ", src.str(),
             " does not match destination ", str());
  if (is_contiguous() && src.is_contiguous()) {
    std::memmove(raw(), src.raw(), nbytes());
    return;
  }
  std::vector<int64_t> src_offsets;
  src_offsets.reserve(size_t(numel()));
  for_each_offset(src, [&](int64_t o) { src_offsets.push_back(o); });
  const char* s = static_cast<const char*>(src.raw());
  char* d = static_cast<char*>(raw());
  const size_t es = dtype_size(dtype_);
  size_t k = 0;
  for_each_offset(*this, [&](int64_t o) { std::memcpy(d + o, s + src_offsets[k++], es); });
}

Tensor Tensor::clone() const {
  Tensor t = empty(shape_, dtype_);
  t.copy_from(*this);
  return t;
}

void Tensor::zero_() const { fill_(0.0); }

void Tensor::fill_(double v) const {
  NURI_CHECK(device().is_cpu(), "fill_ works on CPU tensors; got ", device().str());
  char* base = static_cast<char*>(raw());
  unsigned char bytes[8];
  switch (dtype_) {
    case DType::f32: { float x = float(v); std::memcpy(bytes, &x, 4); break; }
    case DType::bf16: { bf16_t x = f32_to_bf16(float(v)); std::memcpy(bytes, &x, 2); break; }
    case DType::f16: { f16_t x = f32_to_f16(float(v)); std::memcpy(bytes, &x, 2); break; }
    case DType::i32: { int32_t x = int32_t(v); std::memcpy(bytes, &x, 4); break; }
    case DType::i64: { int64_t x = int64_t(v); std::memcpy(bytes, &x, 8); break; }
    case DType::u16: { uint16_t x = uint16_t(v); std::memcpy(bytes, &x, 2); break; }
    case DType::u32: { uint32_t x = uint32_t(v); std::memcpy(bytes, &x, 4); break; }
  }
  const size_t es = dtype_size(dtype_);
  for_each_offset(*this, [&](int64_t o) { std::memcpy(base + o, bytes, es); });
}

std::string Tensor::str() const {
  if (!defined()) return "Tensor[undefined]";
  return "Tensor[" + std::string(dtype_name(dtype_)) + ", " + shape_str(shape_) + ", " +
         device().str() + "]";
}

}  // namespace nuri
