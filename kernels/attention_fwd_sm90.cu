// Instantiation unit of the sm_90a attention forward (attention_fwd_sm90.cuh): the tensor maps
// of q, k, v and out (attn90::TensorMaps), and the launch. Under nvcc the kernel has a body only
// for sm_90a.
#include "attention_fwd_sm90.cuh"
#include "device_info.h"

#include <algorithm>
#include <string>

#if __has_include("nuri/config.h")
#include "nuri/config.h"  // NURI_CUDA_ARCHITECTURES
#else
#define NURI_CUDA_ARCHITECTURES ""  // compiled outside the build (scripts/check-kernels.sh)
#endif

namespace nuri::kernels {

namespace {

template <class T, int D>
std::string launch_forward_sm90(const AttentionParams<T>& p, cudaStream_t stream) {
  using Cfg = AttnFwdSm90Config<D>;
  AttnFwdSm90Params<T> prm;
  prm.p = p;
  attn90::TensorMaps maps;
  prm.q_map = maps(p.q, p.q_s, p.batch, p.seq, p.heads, D, Cfg::kBlockM, "q");
  prm.k_map = maps(p.k, p.k_s, p.batch, p.seq, p.kv_heads, D, Cfg::kBlockN, "k");
  prm.v_map = maps(p.v, p.v_s, p.batch, p.seq, p.kv_heads, D, Cfg::kBlockN, "v");
  prm.o_map = maps(static_cast<const T*>(p.out), p.out_s, p.batch, p.seq, p.heads, D, 64, "out");
  if (!maps.why.empty()) return maps.why;
  prm.n_q_blocks = int(ceil_div(p.seq, Cfg::kBlockM));
  const int64_t work = int64_t(prm.n_q_blocks) * p.heads * p.batch;
  NURI_CHECK(work < (int64_t(1) << 31), "attention forward kernel (sm_90): ", work,
             " work tiles (B ", p.batch, ", T ", p.seq, ", H ", p.heads, ") overflow an int");
  prm.n_work = int(work);
  // Persistent: one block per SM (the kernel's registers allow no more), each walking work
  // tiles blockIdx.x, + gridDim.x, ...
  const dim3 grid(unsigned(std::min<int64_t>(work, current_device_info().sms)));
  if (p.causal) {
    NURI_LAUNCH((attention_fwd_sm90_kernel<T, D, true>), grid, dim3(Cfg::kThreads),
                Cfg::kSmemBytes, stream, prm);
  } else {
    NURI_LAUNCH((attention_fwd_sm90_kernel<T, D, false>), grid, dim3(Cfg::kThreads),
                Cfg::kSmemBytes, stream, prm);
  }
  return "";
}

}  // namespace

bool sm90a_compiled() {
#if defined(NURI_CUDA_EMULATION)
  return true;
#else
  const std::string archs = ";" NURI_CUDA_ARCHITECTURES ";";
  return archs.find(";90a") != std::string::npos;
#endif
}

template <class T>
std::string attention_forward_sm90(const AttentionParams<T>& p, cudaStream_t stream) {
  NURI_CHECK(p.batch > 0 && p.seq > 0 && p.heads > 0 && p.kv_heads > 0 &&
                 p.heads % p.kv_heads == 0,
             "attention forward kernel (sm_90): bad shape (B ", p.batch, ", T ", p.seq, ", H ",
             p.heads, ", Hkv ", p.kv_heads, ")");
  NURI_CHECK(sm90a_compiled(), "attention forward kernel (sm_90): this build has no "
             "sm_90a code (CMAKE_CUDA_ARCHITECTURES ", NURI_CUDA_ARCHITECTURES,
             "); add 90a, or use NURI_ATTENTION=nuri");
  switch (p.head_dim) {  // one line per head dim of kAttentionHeadDims
    case 64: return launch_forward_sm90<T, 64>(p, stream);
    case 128: return launch_forward_sm90<T, 128>(p, stream);
    default: break;
  }
  NURI_CHECK(false, "attention forward kernel (sm_90): head_dim ", p.head_dim, " is not compiled");
  return "";
}

template std::string attention_forward_sm90<__nv_bfloat16>(
    const AttentionParams<__nv_bfloat16>&, cudaStream_t);
template std::string attention_forward_sm90<__half>(const AttentionParams<__half>&, cudaStream_t);

}  // namespace nuri::kernels
