// Instantiation unit of the sm_90a attention forward (attention_fwd_sm90.cuh): the tensor maps
// of q, k and v, and the launch. Under nvcc the kernel has a body only for sm_90a; the driver's
// cuTensorMapEncodeTiled is looked up at run time (cudaGetDriverEntryPointByVersion), so nothing
// links libcuda and a build still loads on machines without a driver. The emulator provides the
// call itself.
#include "attention_fwd_sm90.cuh"

#include <string>

#if __has_include("nuri/config.h")
#include "nuri/config.h"  // NURI_CUDA_ARCHITECTURES
#else
#define NURI_CUDA_ARCHITECTURES ""  // compiled outside the build (scripts/check-kernels.sh)
#endif

namespace nuri::kernels {

namespace {

using EncodeTiled = decltype(&cuTensorMapEncodeTiled);

EncodeTiled encode_tiled() {
#if defined(NURI_CUDA_EMULATION)
  return &cuTensorMapEncodeTiled;
#else
  static const EncodeTiled fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult found{};
    const cudaError_t err = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000,
                                                             cudaEnableDefault, &found);
    NURI_CHECK(err == cudaSuccess && found == cudaDriverEntryPointSuccess && f,
               "the sm_90 attention kernel needs the driver's cuTensorMapEncodeTiled (CUDA 12 "
               "or later), which this driver does not provide; use NURI_ATTENTION=nuri");
    return reinterpret_cast<EncodeTiled>(f);
  }();
  return fn;
#endif
}

/// The map of a [B, T, heads, D] view (strides in elements, D contiguous) as TMA sees it: dims
/// {D, T, heads, B}, boxes of 64 columns by `rows` rows of one head and batch, 128-byte swizzle.
template <class T>
CUtensorMap tensor_map(const T* base, const AttnStrides& s, int batch, int seq, int heads, int d,
                       int rows, const char* name) {
  CUtensorMap m;
  const cuuint64_t dim[4] = {cuuint64_t(d), cuuint64_t(seq), cuuint64_t(heads), cuuint64_t(batch)};
  const cuuint64_t stride[3] = {cuuint64_t(s.t) * sizeof(T), cuuint64_t(s.h) * sizeof(T),
                                cuuint64_t(s.b) * sizeof(T)};
  const cuuint32_t box[4] = {64, cuuint32_t(rows), 1, 1}, estride[4] = {1, 1, 1, 1};
  const CUtensorMapDataType type = std::is_same_v<T, __half> ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16
                                                              : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
  const CUresult r = encode_tiled()(&m, type, 4, const_cast<T*>(base), dim, stride, box, estride,
                                    CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                    CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
                                    CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  NURI_CHECK(r == CUDA_SUCCESS, "attention forward (sm_90): the tensor map of ", name,
             " could not be made (CUresult ", int(r), "; strides ", s.b, ", ", s.t, ", ", s.h,
             " elements); use NURI_ATTENTION=nuri");
  return m;
}

template <class T, int D>
void launch_forward_sm90(const AttentionParams<T>& p, cudaStream_t stream) {
  using Cfg = AttnFwdSm90Config<D>;
  AttnFwdSm90Params<T> prm;
  prm.p = p;
  prm.q_map = tensor_map(p.q, p.q_s, p.batch, p.seq, p.heads, D, Cfg::kBlockM, "q");
  prm.k_map = tensor_map(p.k, p.k_s, p.batch, p.seq, p.kv_heads, D, Cfg::kBlockN, "k");
  prm.v_map = tensor_map(p.v, p.v_s, p.batch, p.seq, p.kv_heads, D, Cfg::kBlockN, "v");
  const dim3 grid(unsigned(ceil_div(p.seq, Cfg::kBlockM)), unsigned(p.heads), unsigned(p.batch));
  if (p.causal) {
    NURI_LAUNCH((attention_fwd_sm90_kernel<T, D, true>), grid, dim3(Cfg::kThreads),
                Cfg::kSmemBytes, stream, prm);
  } else {
    NURI_LAUNCH((attention_fwd_sm90_kernel<T, D, false>), grid, dim3(Cfg::kThreads),
                Cfg::kSmemBytes, stream, prm);
  }
}

}  // namespace

bool attention_sm90_compiled() {
#if defined(NURI_CUDA_EMULATION)
  return true;
#else
  const std::string archs = ";" NURI_CUDA_ARCHITECTURES ";";
  return archs.find(";90a") != std::string::npos;
#endif
}

template <class T>
void attention_forward_sm90(const AttentionParams<T>& p, cudaStream_t stream) {
  NURI_CHECK(p.batch > 0 && p.seq > 0 && p.heads > 0 && p.kv_heads > 0 &&
                 p.heads % p.kv_heads == 0,
             "attention forward kernel (sm_90): bad shape (B ", p.batch, ", T ", p.seq, ", H ",
             p.heads, ", Hkv ", p.kv_heads, ")");
  NURI_CHECK(attention_sm90_compiled(), "attention forward kernel (sm_90): this build has no "
             "sm_90a code (CMAKE_CUDA_ARCHITECTURES ", NURI_CUDA_ARCHITECTURES,
             "); add 90a, or use NURI_ATTENTION=nuri");
  switch (p.head_dim) {  // one line per head dim of kAttentionHeadDims
    case 64: return launch_forward_sm90<T, 64>(p, stream);
    case 128: return launch_forward_sm90<T, 128>(p, stream);
    default:
      NURI_CHECK(false, "attention forward kernel (sm_90): head_dim ", p.head_dim,
                 " is not compiled");
  }
}

template void attention_forward_sm90<__nv_bfloat16>(const AttentionParams<__nv_bfloat16>&,
                                                    cudaStream_t);
template void attention_forward_sm90<__half>(const AttentionParams<__half>&, cudaStream_t);

}  // namespace nuri::kernels
