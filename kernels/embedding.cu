// Instantiation unit of the embedding kernels: float and __nv_bfloat16 activations, each with
// a 16-byte vector variant (when C and the pointers allow) and a scalar one.
#include <algorithm>

#include "embedding.cuh"

namespace nuri::kernels {

namespace {

dim3 grid_for(int64_t items) {
  return dim3(unsigned(std::min(ceil_div(items, kEmbeddingThreads),
                                ceil_div(resident_threads(), kEmbeddingThreads))));
}

/// Every pointer (null ones excepted) is aligned to its vector and kVec divides C.
template <int kVec>
bool vectorizable(int64_t channels, std::initializer_list<std::pair<const void*, size_t>> ptrs) {
  if (channels % kVec != 0) return false;
  for (const auto& [ptr, elem] : ptrs) {
    if (reinterpret_cast<uintptr_t>(ptr) % (elem * kVec) != 0) return false;
  }
  return true;
}

template <class T>
constexpr int kVecOf = int(16 / sizeof(T));

}  // namespace

template <class T>
void embedding(const EmbeddingParams<T>& p, cudaStream_t stream) {
  const int64_t items = p.rows * p.channels;
  if (items == 0) return;
  constexpr int kVec = kVecOf<T>;
  if (vectorizable<kVec>(p.channels,
                         {{p.gWte, sizeof(T)}, {p.gWpe, sizeof(T)}, {p.gOut, sizeof(T)}})) {
    NURI_LAUNCH((embedding_kernel<T, kVec>), grid_for(items / kVec), dim3(kEmbeddingThreads), 0,
                stream, p);
  } else {
    NURI_LAUNCH((embedding_kernel<T, 1>), grid_for(items), dim3(kEmbeddingThreads), 0, stream, p);
  }
}

template <class T>
void embedding_backward_wte(const EmbeddingWteGradParams<T>& p, cudaStream_t stream) {
  if (p.runs == 0 || p.channels == 0) return;
  constexpr int kVec = kVecOf<T>;
  const int64_t items = p.runs * p.channels;
  if (vectorizable<kVec>(
          p.channels,
          {{p.gDout, sizeof(T)}, {p.gDwte, sizeof(float)}, {p.gPartial, sizeof(float)}})) {
    NURI_LAUNCH((embedding_wte_grad_kernel<T, kVec>), grid_for(items / kVec),
                dim3(kEmbeddingThreads), 0, stream, p);
  } else {
    NURI_LAUNCH((embedding_wte_grad_kernel<T, 1>), grid_for(items), dim3(kEmbeddingThreads), 0,
                stream, p);
  }
  if (p.merges == 0) return;
  // The merge reads only f32 tensors: the same pointers under the float view of the params.
  EmbeddingWteGradParams<float> m{nullptr,    p.gOrder, p.gRuns,  p.gMerges,  p.gDwte,
                                  p.gPartial, p.runs,   p.merges, p.channels, p.accumulate};
  const int64_t merge_items = p.merges * p.channels;
  if (vectorizable<4>(p.channels, {{p.gDwte, sizeof(float)}, {p.gPartial, sizeof(float)}})) {
    NURI_LAUNCH((embedding_wte_merge_kernel<4>), grid_for(merge_items / 4), dim3(kEmbeddingThreads),
                0, stream, m);
  } else {
    NURI_LAUNCH((embedding_wte_merge_kernel<1>), grid_for(merge_items), dim3(kEmbeddingThreads), 0,
                stream, m);
  }
}

template <class T>
void embedding_backward_wpe(const EmbeddingWpeGradParams<T>& p, cudaStream_t stream) {
  const int64_t items = p.seq * p.channels;
  if (items == 0) return;
  constexpr int kVec = kVecOf<T>;
  if (vectorizable<kVec>(p.channels, {{p.gDout, sizeof(T)}, {p.gDwpe, sizeof(float)}})) {
    NURI_LAUNCH((embedding_wpe_grad_kernel<T, kVec>), grid_for(items / kVec),
                dim3(kEmbeddingThreads), 0, stream, p);
  } else {
    NURI_LAUNCH((embedding_wpe_grad_kernel<T, 1>), grid_for(items), dim3(kEmbeddingThreads), 0,
                stream, p);
  }
}

#define NURI_EMBEDDING_INSTANTIATE(T)                                                      \
  template void embedding<T>(const EmbeddingParams<T>&, cudaStream_t);                     \
  template void embedding_backward_wte<T>(const EmbeddingWteGradParams<T>&, cudaStream_t); \
  template void embedding_backward_wpe<T>(const EmbeddingWpeGradParams<T>&, cudaStream_t);
NURI_EMBEDDING_INSTANTIATE(float)
NURI_EMBEDDING_INSTANTIATE(__nv_bfloat16)
#undef NURI_EMBEDDING_INSTANTIATE

}  // namespace nuri::kernels
