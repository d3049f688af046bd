// CudaBackend construction, its allocator and the memory ops (zero, copy, workspace).
#include "backend/cuda/cuda_backend.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "attention.h"  // kernels/
#include "sm90.h"       // kernels/
#include "backend/cuda/check.h"
#include "cuda_check.h"  // kernels/

namespace nuri {

// ---- GEMM path ------------------------------------------------------------------------------------

const char* gemm_path_name(GemmPath p) {
  switch (p) {
    case GemmPath::automatic: return "auto";
    case GemmPath::nuri: return "nuri";
    case GemmPath::sm90: return "sm90";
    case GemmPath::cublaslt: return "cublaslt";
  }
  return "?";
}

GemmPath parse_gemm_path(const std::string& s) {
  for (GemmPath p : {GemmPath::automatic, GemmPath::nuri, GemmPath::sm90, GemmPath::cublaslt}) {
    if (s == gemm_path_name(p)) return p;
  }
  NURI_CHECK(false, "unknown GEMM path '", s, "'; use auto, nuri, sm90 or cublaslt");
}

void CudaBackend::set_gemm_path(GemmPath p) {
#if !defined(NURI_CUDA_REAL)
  NURI_CHECK(p != GemmPath::cublaslt, "the GEMM path cublaslt needs a real CUDA build; ", name(),
             " has no cuBLASLt (use auto, nuri or sm90)");
#endif
  NURI_CHECK(p != GemmPath::sm90 || sm90_usable(),
             "the GEMM path sm90 needs an sm_90 GPU (H100/H200) and a build with 90a among "
             "CMAKE_CUDA_ARCHITECTURES (this device: compute capability ", sm_version_ / 10, ".",
             sm_version_ % 10, "; this build: ", (kernels::sm90a_compiled() ? "has" : "lacks"),
             " sm_90a code); use auto, nuri or cublaslt");
  gemm_path_ = p;
}

// ---- attention path -------------------------------------------------------------------------------

const char* attention_path_name(AttentionPath p) {
  switch (p) {
    case AttentionPath::automatic: return "auto";
    case AttentionPath::nuri: return "nuri";
    case AttentionPath::nuri128: return "nuri128";
    case AttentionPath::sm90: return "sm90";
    case AttentionPath::cudnn: return "cudnn";
  }
  return "?";
}

AttentionPath parse_attention_path(const std::string& s) {
  for (AttentionPath p : {AttentionPath::automatic, AttentionPath::nuri, AttentionPath::nuri128,
                          AttentionPath::sm90, AttentionPath::cudnn}) {
    if (s == attention_path_name(p)) return p;
  }
  NURI_CHECK(false, "unknown attention path '", s, "'; use auto, nuri, nuri128, sm90 or cudnn");
}

bool CudaBackend::sm90_usable() const {
#if defined(NURI_CUDA_REAL)
  return sm_version_ == 90 && kernels::sm90a_compiled();
#else
  return true;  // the emulator runs the sm_90a kernels
#endif
}

void CudaBackend::set_attention_path(AttentionPath p) {
  NURI_CHECK(p != AttentionPath::sm90 || sm90_usable(),
             "the attention path sm90 needs an sm_90 GPU (H100/H200) and a build with 90a among "
             "CMAKE_CUDA_ARCHITECTURES (this device: compute capability ", sm_version_ / 10, ".",
             sm_version_ % 10, "; this build: ",
             (kernels::sm90a_compiled() ? "has" : "lacks"),
             " sm_90a code); use auto or nuri");
#if !defined(NURI_HAVE_CUDNN_FRONTEND)
  NURI_CHECK(p != AttentionPath::cudnn, "the attention path cudnn needs a real CUDA build that "
             "found the cuDNN frontend headers (pip package nvidia-cudnn-frontend, installed by "
             "scripts/setup.sh); ", name(), " has none (use auto or nuri)");
#endif
  attention_path_ = p;
}

// ---- backend --------------------------------------------------------------------------------------

CudaBackend::CudaBackend(int device) : device_(device) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  NURI_CHECK(err == cudaSuccess && count > 0,
             "the cuda backend needs a CUDA device, and none is usable here (",
             err == cudaSuccess ? "0 devices" : cudaGetErrorString(err),
             "); use the cpu backend, or a build with -DNURI_CUDA_EMULATION=ON for tests");
  NURI_CHECK(device >= 0 && device < count, "CUDA device ", device, " does not exist (", count,
             " present)");
  NURI_CUDA_CHECK(cudaSetDevice(device));
  NURI_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  alloc_ = std::make_shared<CudaAllocator>(device, stream_);
  cudaDeviceProp prop{};
  NURI_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  sm_version_ = prop.major * 10 + prop.minor;
  if (const char* env = std::getenv("NURI_GEMM"); env && *env) {
    try {
      set_gemm_path(parse_gemm_path(env));
    } catch (const Error& e) {
      NURI_CHECK(false, "NURI_GEMM: ", e.what());
    }
  }
  if (const char* env = std::getenv("NURI_ATTENTION"); env && *env) {
    try {
      set_attention_path(parse_attention_path(env));
    } catch (const Error& e) {
      NURI_CHECK(false, "NURI_ATTENTION: ", e.what());
    }
  }
#if defined(NURI_CUDA_EMULATION)
  if (const char* env = std::getenv("NURI_EMU_MEASURE"); env && *env) {
    const std::string v = env;
    NURI_CHECK(v == "0" || v == "1", "NURI_EMU_MEASURE=", v, " must be 0 or 1");
    emu_measure_ = v == "1";
  }
#endif
  if (const char* env = std::getenv("NURI_GEMM_TILES"); env && *env) {
    const std::string v = env;
    NURI_CHECK(v == "256" || v == "128" || v == "64", "NURI_GEMM_TILES=", v,
               " is not a tile of nuri's GEMM; use 256 (128x256), 128 (128x128) or 64 (64x64), "
               "or unset it to choose by shape");
    gemm_tiles_ = std::stoi(v);
  }
  if (const char* env = std::getenv("NURI_GEMM_SM90_GRID"); env && *env) {
    const std::string v = env;
    NURI_CHECK(v == "persistent" || v == "tiles", "NURI_GEMM_SM90_GRID=", v,
               " is not a grid of the sm_90a GEMM; use persistent (a block an SM, the default) "
               "or tiles (a block a tile, for measuring the difference)");
    gemm_sm90_per_tile_ = v == "tiles";
  }
}

CudaBackend::~CudaBackend() {
  // (From whatever thread drops the last reference; an error is not left for the next call.)
  if (stream_ && cudaSetDevice(device_) != cudaSuccess) cudaGetLastError();
  workspace_ = Tensor();
  if (stream_) cudaStreamSynchronize(stream_);  // no DMA may still read a staging buffer
  for (StagingSlot& slot : staging_) {
    cudaFreeHost(slot.host);
    cudaEventDestroy(slot.done);
  }
  if (alloc_) alloc_->detach_stream();
  if (stream_) cudaStreamDestroy(stream_);
}

std::string CudaBackend::name() const {
#if defined(NURI_CUDA_EMULATION)
  return "cuda-emu";
#else
  return "cuda";
#endif
}

void CudaBackend::synchronize() { NURI_CUDA_CHECK(cudaStreamSynchronize(stream())); }

void CudaBackend::zero(const Tensor& t) {
  NURI_CHECK(t.defined() && !t.device().is_cpu(), "zero: needs a defined CUDA tensor, got ",
             t.str());
  NURI_CHECK(t.is_contiguous(), "zero: the CUDA backend zeroes contiguous tensors only, got ",
             t.str());
  if (t.nbytes() > 0) NURI_CUDA_CHECK(cudaMemsetAsync(t.raw(), 0, t.nbytes(), stream()));
}

void CudaBackend::copy(const Tensor& src, const Tensor& dst) {
  NURI_CHECK(src.defined() && dst.defined(), "copy: both tensors must be defined");
  NURI_CHECK(src.shape() == dst.shape() && src.dtype() == dst.dtype(), "copy: ", src.str(),
             " into ", dst.str(), ": shapes and dtypes must match");
  NURI_CHECK(src.is_contiguous() && dst.is_contiguous(),
             "copy: the CUDA backend copies contiguous tensors only (", src.str(), " into ",
             dst.str(), ")");
  if (src.nbytes() == 0) return;
  const bool from_host = src.device().is_cpu(), to_host = dst.device().is_cpu();
  const cudaMemcpyKind kind = from_host && to_host ? cudaMemcpyHostToHost
                              : from_host          ? cudaMemcpyHostToDevice
                              : to_host            ? cudaMemcpyDeviceToHost
                                                   : cudaMemcpyDeviceToDevice;
  if (kind == cudaMemcpyHostToDevice && src.nbytes() <= kStagingSlots * kStagingSlotBytes) {
    upload(dst.raw(), src.raw(), src.nbytes());
    return;
  }
  NURI_CUDA_CHECK(cudaMemcpyAsync(dst.raw(), src.raw(), src.nbytes(), kind, stream()));
  // Host memory may be freed or read as soon as this returns.
  if (from_host || to_host) synchronize();
}

void CudaBackend::upload(void* dst, const void* src, size_t bytes) {
  const cudaStream_t s = stream();  // (the device current first: the events are made on it)
  if (staging_.empty()) {
    staging_.resize(kStagingSlots);
    for (StagingSlot& slot : staging_) {
      NURI_CUDA_CHECK(cudaMallocHost(&slot.host, kStagingSlotBytes));
      NURI_CUDA_CHECK(cudaEventCreateWithFlags(&slot.done, cudaEventDisableTiming));
    }
  }
  for (size_t off = 0; off < bytes; off += kStagingSlotBytes) {
    StagingSlot& slot = staging_[size_t(staging_next_)];
    staging_next_ = (staging_next_ + 1) % kStagingSlots;
    if (slot.pending) {  // the DMA of this slot's last use must have read it
      NURI_CUDA_CHECK(cudaEventSynchronize(slot.done));
      slot.pending = false;
    }
    const size_t n = std::min(kStagingSlotBytes, bytes - off);
    std::memcpy(slot.host, static_cast<const char*>(src) + off, n);
    NURI_CUDA_CHECK(cudaMemcpyAsync(static_cast<char*>(dst) + off, slot.host, n,
                                    cudaMemcpyHostToDevice, s));
    NURI_CUDA_CHECK(cudaEventRecord(slot.done, s));
    slot.pending = true;
  }
}

void* CudaBackend::workspace(size_t bytes) {
  if (!workspace_.defined() || workspace_.nbytes() < bytes) {
    workspace_ = Tensor();  // free first: the old one is no longer needed
    workspace_ = empty({int64_t((bytes + 255) / 256 * 64)}, DType::f32);  // 256-byte units
  }
  return workspace_.raw();
}

}  // namespace nuri
