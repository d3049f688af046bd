// Instantiation unit of the attention forward: __nv_bfloat16 and __half, head dims from
// kAttentionHeadDims, causal or not.
#include "attention_fwd.cuh"

namespace nuri::kernels {

namespace {

template <class T, int D>
void launch_forward(const AttentionParams<T>& p, cudaStream_t stream) {
  using Cfg = AttnFwdConfig<D>;
  const dim3 grid(unsigned(ceil_div(p.seq, Cfg::kBlockM)), unsigned(p.heads), unsigned(p.batch));
  if (p.causal) {
    NURI_LAUNCH((attention_fwd_kernel<T, D, true>), grid, dim3(Cfg::kThreads), Cfg::kSmemBytes,
                stream, p);
  } else {
    NURI_LAUNCH((attention_fwd_kernel<T, D, false>), grid, dim3(Cfg::kThreads), Cfg::kSmemBytes,
                stream, p);
  }
}

}  // namespace

template <class T>
void attention_forward(const AttentionParams<T>& p, cudaStream_t stream) {
  NURI_CHECK(p.batch > 0 && p.seq > 0 && p.heads > 0 && p.kv_heads > 0 &&
                 p.heads % p.kv_heads == 0,
             "attention forward kernel: bad shape (B ", p.batch, ", T ", p.seq, ", H ", p.heads,
             ", Hkv ", p.kv_heads, ")");
  switch (p.head_dim) {  // one line per head dim of kAttentionHeadDims
    case 64: return launch_forward<T, 64>(p, stream);
    case 128: return launch_forward<T, 128>(p, stream);
    default: NURI_CHECK(false, "attention forward kernel: head_dim ", p.head_dim, " is not compiled");
  }
}

template void attention_forward<__nv_bfloat16>(const AttentionParams<__nv_bfloat16>&, cudaStream_t);
template void attention_forward<__half>(const AttentionParams<__half>&, cudaStream_t);

}  // namespace nuri::kernels
