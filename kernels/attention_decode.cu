// Instantiation unit of the decoding attention kernel (attention_decode.cuh): bf16 and f16.
#include "attention_decode.cuh"

namespace nuri::kernels {

template <class T>
void attention_decode(const AttentionDecodeParams<T>& p, cudaStream_t stream) {
  NURI_CHECK(p.batch > 0 && p.q_rows > 0 && p.heads > 0 && p.kv_heads > 0 &&
                 p.heads % p.kv_heads == 0 && p.q_rows <= p.keys && p.head_dim >= 1 &&
                 p.head_dim <= kDecodeMaxHeadDim && p.batch <= 65535 &&
                 int64_t(p.q_rows) * p.heads <= int64_t(INT32_MAX),
             "attention_decode kernel: bad shape (B ", p.batch, ", Tq ", p.q_rows, ", keys ",
             p.keys, ", H ", p.heads, ", Hkv ", p.kv_heads, ", D ", p.head_dim, ")");
  const dim3 grid(unsigned(p.q_rows * p.heads), unsigned(p.batch));
  NURI_LAUNCH(attention_decode_kernel<T>, grid, dim3(kDecodeThreads),
              attention_decode_smem(p.head_dim), stream, p);
}

template void attention_decode<__nv_bfloat16>(const AttentionDecodeParams<__nv_bfloat16>&,
                                              cudaStream_t);
template void attention_decode<__half>(const AttentionDecodeParams<__half>&, cudaStream_t);

}  // namespace nuri::kernels
