// Instantiation unit of the decoding attention kernel (attention_decode.cuh): bf16 and f16.
#include <algorithm>
#include <cstdlib>
#include <string>

#include "attention_decode.cuh"

namespace nuri::kernels {

int attention_decode_splits(int batch, int q_rows, int heads, int keys, int sms) {
  if (const char* env = std::getenv("NURI_DECODE_SPLITS"); env && *env) {
    char* end = nullptr;
    const long v = std::strtol(env, &end, 10);
    NURI_CHECK(env[0] >= '0' && env[0] <= '9' && *end == '\0' && v >= 1 &&
                   v <= kDecodeMaxSplits,
               "NURI_DECODE_SPLITS='", env, "': split each decoded row's keys over an integer "
               "number of blocks from 1 to ", kDecodeMaxSplits, ", or unset it to let the "
               "launcher choose");
    return int(v);
  }
  const int64_t blocks = int64_t(batch) * q_rows * heads;
  if (blocks <= 0 || blocks >= 2 * int64_t(sms)) return 1;  // the rows alone give every SM two blocks
  const int64_t want = 4 * int64_t(sms);       // else about four with the splits
  const int64_t by_keys = std::max<int64_t>(1, keys / kDecodeMinSplitKeys);
  const int64_t by_sms = (want + blocks - 1) / blocks;
  return int(std::min<int64_t>({by_keys, by_sms, kDecodeMaxSplits}));
}

size_t attention_decode_workspace_bytes(int batch, int q_rows, int heads, int head_dim,
                                        int splits) {
  return size_t(batch) * size_t(q_rows) * size_t(heads) * size_t(splits) *
         size_t(2 + head_dim) * sizeof(float);
}

template <class T>
void attention_decode(const AttentionDecodeParams<T>& p, cudaStream_t stream) {
  NURI_CHECK(p.batch > 0 && p.q_rows > 0 && p.heads > 0 && p.kv_heads > 0 &&
                 p.heads % p.kv_heads == 0 && p.q_rows <= p.keys && p.head_dim >= 1 &&
                 p.head_dim <= kDecodeMaxHeadDim && p.batch <= 65535 &&
                 int64_t(p.q_rows) * p.heads <= int64_t(INT32_MAX) && p.splits >= 1 &&
                 p.splits <= kDecodeMaxSplits && (p.splits == 1 || p.partial != nullptr),
             "attention_decode kernel: bad shape (B ", p.batch, ", Tq ", p.q_rows, ", keys ",
             p.keys, ", H ", p.heads, ", Hkv ", p.kv_heads, ", D ", p.head_dim, ", splits ",
             p.splits, p.splits > 1 && !p.partial ? " without a workspace" : "", ")");
  const dim3 grid(unsigned(p.q_rows * p.heads), unsigned(p.batch), unsigned(p.splits));
  NURI_LAUNCH(attention_decode_kernel<T>, grid, dim3(kDecodeThreads),
              attention_decode_smem(p.head_dim), stream, p);
  if (p.splits > 1) {
    NURI_LAUNCH(attention_decode_merge_kernel<T>, dim3(grid.x, grid.y), dim3(kDecodeThreads), 0,
                stream, p);
  }
}

template void attention_decode<__nv_bfloat16>(const AttentionDecodeParams<__nv_bfloat16>&,
                                              cudaStream_t);
template void attention_decode<__half>(const AttentionDecodeParams<__half>&, cudaStream_t);

}  // namespace nuri::kernels
