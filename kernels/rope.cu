// Instantiation unit of the rope kernels: float and __nv_bfloat16, each with a 16-byte vector
// variant (when the head dim, the strides and the pointers allow) and a scalar one.
#include <algorithm>

#include "rope.cuh"

namespace nuri::kernels {

namespace {

template <class T, int kVec>
bool vectorizable(const RopeParams<T>& p) {
  const int64_t strides[] = {p.half, p.x_sb, p.x_st, p.x_sh, p.y_sb, p.y_st, p.y_sh};
  for (int64_t s : strides) {
    if (s % kVec != 0) return false;
  }
  return aligned(p.gX, sizeof(T) * kVec) && aligned(p.gY, sizeof(T) * kVec);
}

template <class T, int kVec>
void launch_rope(const RopeParams<T>& p, cudaStream_t stream) {
  RopeKernelParams<T> kp{p, p.half / kVec, 1};
  // Split heads among threads only when B·T alone leaves the device underfilled: every split
  // recomputes the item's sin/cos.
  const int64_t base = p.batch * p.seq * kp.vecs;
  const int64_t target = resident_threads();
  if (base < target) kp.groups = std::min<int64_t>(p.heads, ceil_div(target, base));
  const int64_t items = base * kp.groups;
  const int64_t blocks = std::min(ceil_div(items, kRopeThreads), ceil_div(target, kRopeThreads));
  NURI_LAUNCH((rope_kernel<T, kVec>), dim3(unsigned(blocks)), dim3(kRopeThreads),
              size_t(p.half) * sizeof(RopeTurns), stream, kp);
}

}  // namespace

template <class T>
void rope(const RopeParams<T>& p, cudaStream_t stream) {
  NURI_CHECK(p.batch * p.seq * p.heads > 0 && p.half >= 1 && 2 * p.half <= kRopeMaxHeadDim,
             "rope kernel: bad shape (B ", p.batch, ", T ", p.seq, ", H ", p.heads, ", D/2 ",
             p.half, ")");
  constexpr int kVec = 16 / sizeof(T);
  if (vectorizable<T, kVec>(p)) {
    launch_rope<T, kVec>(p, stream);
  } else {
    launch_rope<T, 1>(p, stream);
  }
}

template void rope<float>(const RopeParams<float>&, cudaStream_t);
template void rope<__nv_bfloat16>(const RopeParams<__nv_bfloat16>&, cudaStream_t);

}  // namespace nuri::kernels
