// Instantiation unit of the attention backward (attention_bwd.cuh): the workspace layout, the
// runtime → compile-time dispatch (head dim, causal, deterministic) and the launch order
// preprocess → dK/dV → dQ (or convert). Each launch depends only on earlier launches, never on
// other blocks of the same launch. Instantiated for __nv_bfloat16 and __half.
#include "attention_bwd.cuh"

#include <algorithm>

namespace nuri::kernels {

namespace {

size_t di_bytes(int batch, int seq, int heads) {
  return size_t(round_up(int64_t(batch) * heads * seq * int64_t(sizeof(float)), 256));
}

// Blocks for a grid-stride kernel of `items` items per thread-sized step.
unsigned grid_stride_blocks(int64_t items) {
  const int64_t fill = std::max<int64_t>(1, resident_threads() / attn::kBwdThreads);
  return unsigned(std::clamp<int64_t>(ceil_div(items, attn::kBwdThreads), 1, fill));
}

template <class T, int D, bool kCausal>
void backward(const attn::AttnBwdParams<T>& p, cudaStream_t stream) {
  const AttentionParams<T>& a = p.a;
  const dim3 block(attn::kBwdThreads);
  const int64_t rows = int64_t(a.batch) * a.seq * a.heads;

  // One warp per row for Di; the zero fill of the accumulator needs D / 4 threads per row.
  const int64_t pre_items = std::max(rows * kWarpSize, p.g_dq_acc ? rows * D / 4 : 0);
  NURI_LAUNCH((attn::attn_bwd_preprocess<T, D>), dim3(grid_stride_blocks(pre_items)), block, 0,
              stream, p);

  const dim3 kv_grid(unsigned(ceil_div(a.seq, AttnBwdKVConfig<D>::kBlockN)), unsigned(a.kv_heads),
                     unsigned(a.batch));
  if (a.deterministic) {
    NURI_LAUNCH((attn::attn_bwd_dkdv<T, D, kCausal, false>), kv_grid, block,
                AttnBwdKVConfig<D>::kSmemBytes, stream, p);
    const dim3 q_grid(unsigned(ceil_div(a.seq, AttnBwdQConfig<D>::kBlockM)), unsigned(a.heads),
                      unsigned(a.batch));
    NURI_LAUNCH((attn::attn_bwd_dq<T, D, kCausal>), q_grid, block, AttnBwdQConfig<D>::kSmemBytes,
                stream, p);
  } else {
    NURI_LAUNCH((attn::attn_bwd_dkdv<T, D, kCausal, true>), kv_grid, block,
                AttnBwdKVConfig<D>::kSmemBytes, stream, p);
    NURI_LAUNCH((attn::attn_bwd_convert_dq<T, D>), dim3(grid_stride_blocks(rows * D / 8)), block, 0,
                stream, p);
  }
}

template <class T, int D>
void backward(const attn::AttnBwdParams<T>& p, cudaStream_t stream) {
  if (p.a.causal) {
    backward<T, D, true>(p, stream);
  } else {
    backward<T, D, false>(p, stream);
  }
}

}  // namespace

namespace attn {

template <class T>
void backward_di(const AttentionParams<T>& a, float* di, cudaStream_t stream) {
  AttnBwdParams<T> p;
  p.a = a;
  p.g_di = di;
  p.g_dq_acc = nullptr;
  const int64_t rows = int64_t(a.batch) * a.seq * a.heads;
  switch (a.head_dim) {  // one line per entry of kAttentionHeadDims
    case 64:
      NURI_LAUNCH((attn_bwd_preprocess<T, 64>), dim3(grid_stride_blocks(rows * kWarpSize)),
                  dim3(kBwdThreads), 0, stream, p);
      return;
    case 128:
      NURI_LAUNCH((attn_bwd_preprocess<T, 128>), dim3(grid_stride_blocks(rows * kWarpSize)),
                  dim3(kBwdThreads), 0, stream, p);
      return;
    default: NURI_CHECK(false, "attention_backward: head_dim ", a.head_dim, " is not dispatched");
  }
}

template void backward_di<__nv_bfloat16>(const AttentionParams<__nv_bfloat16>&, float*,
                                         cudaStream_t);
template void backward_di<__half>(const AttentionParams<__half>&, float*, cudaStream_t);

}  // namespace attn

size_t attention_backward_workspace_bytes(int batch, int seq, int heads, int head_dim,
                                          bool deterministic) {
  const size_t di = di_bytes(batch, seq, heads);
  if (deterministic) return di;
  return di +
         size_t(round_up(int64_t(batch) * seq * heads * head_dim * int64_t(sizeof(float)), 256));
}

template <class T>
void attention_backward(const AttentionParams<T>& a, void* workspace, cudaStream_t stream) {
  NURI_CHECK(a.batch > 0 && a.seq > 0, "attention_backward: batch (", a.batch,
             ") and sequence length (", a.seq, ") must be positive");
  NURI_CHECK(attention_head_dim_supported(a.head_dim), "attention_backward: head_dim ", a.head_dim,
             " has no compiled kernel (supported: 64, 128)");
  NURI_CHECK(a.kv_heads > 0 && a.heads % a.kv_heads == 0, "attention_backward: n_kv_head (",
             a.kv_heads, ") must divide n_head (", a.heads, ")");
  NURI_CHECK(workspace != nullptr, "attention_backward: no workspace given");
  attn::AttnBwdParams<T> p;
  p.a = a;
  p.g_di = static_cast<float*>(workspace);
  p.g_dq_acc = a.deterministic ? nullptr
                               : reinterpret_cast<float*>(static_cast<char*>(workspace) +
                                                          di_bytes(a.batch, a.seq, a.heads));
  p.scale_log2 = a.scale * attn::kLog2e;
  p.group = a.heads / a.kv_heads;
  switch (a.head_dim) {  // one line per entry of kAttentionHeadDims
    case 64: return backward<T, 64>(p, stream);
    case 128: return backward<T, 128>(p, stream);
    default: NURI_CHECK(false, "attention_backward: head_dim ", a.head_dim, " is not dispatched");
  }
}

template void attention_backward<__nv_bfloat16>(const AttentionParams<__nv_bfloat16>&, void*,
                                                cudaStream_t);
template void attention_backward<__half>(const AttentionParams<__half>&, void*, cudaStream_t);

}  // namespace nuri::kernels
