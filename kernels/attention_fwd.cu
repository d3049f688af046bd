// Instantiation unit of the attention forward: __nv_bfloat16 and __half, head dims from
// kAttentionHeadDims, causal or not, 64-row query blocks on padded or swizzled tiles
// (attn_fwd_swizzled), and 128-row ones on key tiles of 64 or (where two such blocks do not fit
// an SM's shared memory) 32.
#include "attention_fwd.cuh"
#include "device_info.h"

namespace nuri::kernels {

namespace {

template <class T, int D, int kWarpRows, int kBlockN = 64, bool kSwizzled = kBlockN == 32>
void launch_forward(const AttentionParams<T>& p, cudaStream_t stream) {
  using Cfg = AttnFwdConfig<D, kWarpRows, kBlockN, kSwizzled>;
  const dim3 grid(unsigned(ceil_div(p.seq, Cfg::kBlockM)), unsigned(p.heads), unsigned(p.batch));
  const dim3 block(Cfg::kThreads);
  if constexpr (kWarpRows == 32) {
    if (p.causal) {
      NURI_LAUNCH((attention_fwd_q128_kernel<T, D, true, kBlockN>), grid, block, Cfg::kSmemBytes,
                  stream, p);
    } else {
      NURI_LAUNCH((attention_fwd_q128_kernel<T, D, false, kBlockN>), grid, block, Cfg::kSmemBytes,
                  stream, p);
    }
  } else if (p.causal) {
    NURI_LAUNCH((attention_fwd_kernel<T, D, true, kSwizzled>), grid, block, Cfg::kSmemBytes,
                stream, p);
  } else {
    NURI_LAUNCH((attention_fwd_kernel<T, D, false, kSwizzled>), grid, block, Cfg::kSmemBytes,
                stream, p);
  }
}

template <class T, int D>
void launch_forward(const AttentionParams<T>& p, cudaStream_t stream, int block_rows) {
  const size_t smem_per_sm = current_device_info().smem_per_sm;
  if (block_rows == 64) {
    if (attn_fwd_swizzled(D, smem_per_sm)) return launch_forward<T, D, 16, 64, true>(p, stream);
    return launch_forward<T, D, 16>(p, stream);
  }
  if (attn_fwd_q128_key_rows(D, smem_per_sm) == 64) {
    return launch_forward<T, D, 32>(p, stream);
  }
  launch_forward<T, D, 32, 32>(p, stream);
}

}  // namespace

template <class T>
void attention_forward(const AttentionParams<T>& p, cudaStream_t stream, int block_rows) {
  NURI_CHECK(p.batch > 0 && p.seq > 0 && p.heads > 0 && p.kv_heads > 0 &&
                 p.heads % p.kv_heads == 0,
             "attention forward kernel: bad shape (B ", p.batch, ", T ", p.seq, ", H ", p.heads,
             ", Hkv ", p.kv_heads, ")");
  NURI_CHECK(block_rows == 64 || block_rows == 128, "attention forward kernel: blocks of ",
             block_rows, " query rows are not compiled (64 or 128)");
  switch (p.head_dim) {  // one line per head dim of kAttentionHeadDims
    case 64: return launch_forward<T, 64>(p, stream, block_rows);
    case 128: return launch_forward<T, 128>(p, stream, block_rows);
    default: NURI_CHECK(false, "attention forward kernel: head_dim ", p.head_dim, " is not compiled");
  }
}

template void attention_forward<__nv_bfloat16>(const AttentionParams<__nv_bfloat16>&,
                                               cudaStream_t, int);
template void attention_forward<__half>(const AttentionParams<__half>&, cudaStream_t, int);

}  // namespace nuri::kernels
