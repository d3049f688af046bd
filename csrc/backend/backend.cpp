// Backend registry: which backends this build can create. No global instances: each call makes
// a new backend that owns its allocator.
#include "nuri/backend/backend.h"

#include <algorithm>
#include <cstdlib>

#include "backend/cpu/cpu_backend.h"
#include "nuri/config.h"
#if defined(NURI_CUDA_EMULATION) || defined(NURI_CUDA_REAL)
#include "backend/cuda/cuda_backend.h"
#endif

namespace nuri {

std::string cuda_attention_head_dims_text() {
  std::string text;
  for (const int64_t d : kCudaAttentionHeadDims) {
    text += (text.empty() ? "" : ", ") + std::to_string(d);
  }
  return text;
}

float clip_coefficient(float norm, float max_norm) {
  if (max_norm <= 0.f) return 1.f;
  return std::min(1.f, max_norm / (norm + 1e-6f));
}

Tensor document_bounds(const Tensor& tokens, int32_t separator, bool separator_starts) {
  NURI_CHECK(tokens.defined() && tokens.device().is_cpu() && tokens.dtype() == DType::i32 &&
                 tokens.dim() == 2 && tokens.is_contiguous(),
             "document_bounds: tokens must be a contiguous [B, T] i32 host tensor, got ",
             tokens.defined() ? tokens.str() : std::string("an undefined tensor"));
  const int64_t b = tokens.size(0), t = tokens.size(1);
  Tensor out = Tensor::empty({2, b, t}, DType::i32);
  const int32_t* tok = tokens.data<int32_t>();
  int32_t* start = out.data<int32_t>();
  int32_t* end = start + b * t;
  for (int64_t r = 0; r < b; ++r) {
    const int32_t* x = tok + r * t;
    // A document starts at 0, and at a separator (separator_starts) or just past one.
    auto starts_at = [&](int64_t i) {
      return i == 0 || (separator_starts ? x[i] : x[i - 1]) == separator;
    };
    int32_t s = 0;
    for (int64_t i = 0; i < t; ++i) {
      if (starts_at(i)) s = int32_t(i);
      start[r * t + i] = s;
    }
    int32_t e = int32_t(t);
    for (int64_t i = t - 1; i >= 0; --i) {
      end[r * t + i] = e;
      if (starts_at(i)) e = int32_t(i);
    }
  }
  return out;
}

Tensor document_positions(const Tensor& bounds) {
  NURI_CHECK(bounds.defined() && bounds.device().is_cpu() && bounds.dtype() == DType::i32 &&
                 bounds.dim() == 3 && bounds.size(0) == 2 && bounds.is_contiguous(),
             "document_positions: bounds must be a contiguous [2, B, T] i32 host tensor "
             "(document_bounds), got ",
             bounds.defined() ? bounds.str() : std::string("an undefined tensor"));
  const int64_t b = bounds.size(1), t = bounds.size(2);
  Tensor out = Tensor::empty({b, t}, DType::i32);
  const int32_t* start = bounds.data<int32_t>();
  int32_t* pos = out.data<int32_t>();
  for (int64_t i = 0; i < b * t; ++i) pos[i] = int32_t(i % t) - start[i];
  return out;
}

void check_document_bounds(const char* op, const Tensor& bounds) {
  NURI_CHECK(bounds.device().is_cpu() && bounds.dtype() == DType::i32 && bounds.dim() == 3 &&
                 bounds.size(0) == 2 && bounds.is_contiguous(),
             op, ": documents must be a contiguous [2, B, T] i32 tensor (document_bounds), got ",
             bounds.str());
  const int64_t b = bounds.size(1), t = bounds.size(2);
  const int32_t* start = bounds.data<int32_t>();
  const int32_t* end = start + b * t;
  for (int64_t r = 0; r < b; ++r) {
    for (int64_t i = 0; i < t; ++i) {
      const int64_t k = r * t + i;
      const bool starts = i == 0 || end[k - 1] == i;
      const int64_t want = starts ? i : start[k - 1];
      NURI_CHECK(start[k] == want, op, ": documents row ", r, " position ", i, ": key_start is ",
                 start[k], ", expected ", want, " (the bounds must describe runs of whole "
                 "documents; make them with document_bounds)");
      const bool ends = i + 1 == t || start[k + 1] == i + 1;
      NURI_CHECK(ends ? end[k] == i + 1 : (end[k] > i + 1 && end[k] <= t), op,
                 ": documents row ", r, " position ", i, ": query_end is ", end[k],
                 " where its document ", ends ? "ends at " + std::to_string(i + 1)
                                             : "goes on past " + std::to_string(i + 1),
                 " (make the bounds with document_bounds)");
      NURI_CHECK(ends || end[k + 1] == end[k], op, ": documents row ", r, " position ", i,
                 ": query_end ", end[k], " differs from the next position's ", end[k + 1],
                 " inside one document (make the bounds with document_bounds)");
    }
  }
}

std::vector<std::string> available_backends() {
#if defined(NURI_CUDA_EMULATION)
  return {"cpu", "cuda-emu"};
#elif defined(NURI_CUDA_REAL)
  return {"cpu", "cuda"};  // built; make_backend("cuda") says so when no device is present
#else
  return {"cpu"};
#endif
}

namespace {

// NURI_MAX_DEVICE_BYTES: the limit of every backend's tensor memory (Allocator::set_limit).
std::unique_ptr<Backend> with_limit(std::unique_ptr<Backend> be) {
  if (const char* env = std::getenv("NURI_MAX_DEVICE_BYTES"); env && *env) {
    be->allocator()->set_limit(parse_bytes(env, "NURI_MAX_DEVICE_BYTES"));
  }
  return be;
}

std::unique_ptr<Backend> make_backend_unlimited(const std::string& name);

}  // namespace

std::unique_ptr<Backend> make_backend(const std::string& name) {
  return with_limit(make_backend_unlimited(name));
}

namespace {

std::unique_ptr<Backend> make_backend_unlimited(const std::string& name) {
  if (name == "cpu") return std::make_unique<CpuBackend>();
  // "cuda" is device 0, "cuda:N" device N (also "cuda-emu:N" in the emulated build).
  const size_t colon = name.find(':');
  const std::string base = name.substr(0, colon);
  int device = 0;
  if (colon != std::string::npos) {
    const std::string index = name.substr(colon + 1);
    NURI_CHECK(!index.empty() && index.size() <= 4 &&
                   index.find_first_not_of("0123456789") == std::string::npos,
               "backend '", name, "': the device after ':' must be a number, as in 'cuda:1'");
    device = std::stoi(index);
  }
#if defined(NURI_CUDA_EMULATION)
  if (base == "cuda-emu") return std::make_unique<CudaBackend>(device);
#elif defined(NURI_CUDA_REAL)
  if (base == "cuda") return std::make_unique<CudaBackend>(device);
#endif
  (void)device;
  std::string list;
  for (const auto& n : available_backends()) list += (list.empty() ? "" : ", ") + n;
  NURI_CHECK(false, "unknown backend '", name, "'; this build has: ", list,
             " (a CUDA backend takes a device index, as in cuda:1)");
}

}  // namespace

std::vector<CudaDeviceInfo> cuda_devices() {
  std::vector<CudaDeviceInfo> devices;
#if defined(NURI_CUDA_EMULATION) || defined(NURI_CUDA_REAL)
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {  // no driver or no device: none usable
    cudaGetLastError();
    return devices;
  }
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) {
      cudaGetLastError();
      continue;
    }
    devices.push_back({i, prop.name, prop.major, prop.minor, int64_t(prop.totalGlobalMem),
                       prop.multiProcessorCount});
  }
#endif
  return devices;
}

}  // namespace nuri
