// Instantiation unit of the linear-layer kernels: T = __nv_bfloat16 and __half on tensor cores,
// float on the SIMT kernel; the three product layouts, aligned (16-byte cp.async) or not.
#include <atomic>

#include "matmul.cuh"

namespace nuri::kernels {

namespace {

/// Every row of a [rows][ld] matrix at p starts 16-byte aligned.
template <class T>
bool rows_aligned(const T* p, int64_t ld) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0 && (ld * int64_t(sizeof(T))) % 16 == 0;
}

/// SMs of the current device (cached per device: the property query is slow on real devices).
int device_sms() {
  static std::atomic<int> cache[64];
  int dev = 0;
  NURI_CUDA_CHECK(cudaGetDevice(&dev));
  NURI_CHECK(dev >= 0 && dev < 64, "matmul: device index ", dev, " out of range");
  int sms = cache[dev].load(std::memory_order_relaxed);
  if (sms == 0) {
    cudaDeviceProp prop{};
    NURI_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
    sms = prop.multiProcessorCount > 0 ? prop.multiProcessorCount : 1;
    cache[dev].store(sms, std::memory_order_relaxed);
  }
  return sms;
}

template <class C, class T, bool kATrans, bool kBKN>
void launch_tc(const mm::GemmArgs<T>& a, cudaStream_t stream) {
  const dim3 grid(unsigned(ceil_div(a.n, C::kBlockN)), unsigned(ceil_div(a.m, C::kBlockM)));
  if (rows_aligned(a.a, a.lda) && rows_aligned(a.b, a.ldb)) {
    NURI_LAUNCH((mm::gemm_tc_kernel<C, T, kATrans, kBKN, true>), grid, dim3(C::kThreads),
                C::kSmemBytes, stream, a);
  } else {
    NURI_LAUNCH((mm::gemm_tc_kernel<C, T, kATrans, kBKN, false>), grid, dim3(C::kThreads),
                C::kSmemBytes, stream, a);
  }
}

template <class T, bool kATrans, bool kBKN>
void launch_gemm(const mm::GemmArgs<T>& a, int tiles, cudaStream_t stream) {
  NURI_CHECK(a.m > 0 && a.n > 0 && a.k >= 0, "matmul kernel: bad shape (M ", a.m, ", N ", a.n,
             ", K ", a.k, ")");
  if constexpr (std::is_same_v<T, float>) {
    using C = mm::SimtConfig;
    const dim3 grid(unsigned(ceil_div(a.n, C::kBlockN)), unsigned(ceil_div(a.m, C::kBlockM)));
    NURI_LAUNCH((mm::gemm_simt_kernel<kATrans, kBKN>), grid, dim3(C::kThreads), C::kSmemBytes,
                stream, a);
  } else if (matmul_tiles(a.m, a.n, device_sms(), tiles) == mm::TcLarge::kBlockM) {
    launch_tc<mm::TcLarge, T, kATrans, kBKN>(a, stream);
  } else {
    launch_tc<mm::TcSmall, T, kATrans, kBKN>(a, stream);
  }
}

/// The kernels index with int: every dimension must fit (the element offsets are int64).
void check_dims(const char* op, int64_t m, int64_t n, int64_t k) {
  constexpr int64_t kMax = int64_t(1) << 30;
  NURI_CHECK(m < kMax && n < kMax && k < kMax, op, " kernel: dimensions (", m, ", ", n, ", ", k,
             ") exceed 2^30");
}

}  // namespace

int matmul_tiles(int64_t rows, int64_t cols, int sms, int forced) {
  NURI_CHECK(forced == 0 || forced == mm::TcLarge::kBlockM || forced == mm::TcSmall::kBlockM,
             "matmul: tile edge ", forced, " does not exist (0 to choose, ", mm::TcLarge::kBlockM,
             " or ", mm::TcSmall::kBlockM, ")");
  if (forced != 0) return forced;
  constexpr int64_t kL = mm::TcLarge::kBlockM;
  const int64_t blocks = ((rows + kL - 1) / kL) * ((cols + kL - 1) / kL);
  return blocks < sms ? int(mm::TcSmall::kBlockM) : int(kL);
}

template <class T>
void matmul_forward(const MatmulParams<T>& p, cudaStream_t stream) {
  check_dims("matmul", p.m, p.n, p.k);
  mm::GemmArgs<T> a{};
  a.a = p.gX, a.lda = p.k, a.b = p.gW, a.ldb = p.k;
  a.m = int(p.m), a.n = int(p.n), a.k = int(p.k);
  a.bias = p.gBias;
  a.pre = p.gelu ? p.gPre : nullptr;
  a.residual = p.gResidual;
  a.out = p.gY;
  launch_gemm<T, false, false>(a, p.tiles, stream);
}

template <class T>
void matmul_backward_input(const MatmulBackwardInputParams<T>& p, cudaStream_t stream) {
  check_dims("matmul_backward_input", p.m, p.n, p.k);
  mm::GemmArgs<T> a{};  // dx [M, K] = dy [M, N] · W [N, K]: contraction over N
  a.a = p.gDy, a.lda = p.n, a.b = p.gW, a.ldb = p.k;
  a.m = int(p.m), a.n = int(p.k), a.k = int(p.n);
  a.gelu_pre = p.gGeluPre;
  a.out = p.gDx;
  a.accumulate = p.accumulate;
  launch_gemm<T, false, true>(a, p.tiles, stream);
}

template <class T>
void matmul_backward_weight(const MatmulBackwardWeightParams<T>& p, cudaStream_t stream) {
  check_dims("matmul_backward_weight", p.m, p.n, p.k);
  mm::GemmArgs<T> a{};  // dW [N, K] = dyᵀ [N, M] · x [M, K]: contraction over M
  a.a = p.gDy, a.lda = p.n, a.b = p.gX, a.ldb = p.k;
  a.m = int(p.n), a.n = int(p.k), a.k = int(p.m);
  a.out_f32 = p.gDw;
  a.accumulate = p.accumulate;
  launch_gemm<T, true, true>(a, p.tiles, stream);
}

template <class T>
void matmul_backward_bias(const MatmulBackwardBiasParams<T>& p, cudaStream_t stream) {
  NURI_CHECK(p.m > 0 && p.n > 0, "matmul_backward_bias kernel: bad shape (M ", p.m, ", N ", p.n,
             ")");
  const dim3 grid(unsigned(ceil_div(p.n, mm::kBiasCols)), unsigned(matmul_bias_partials(p.m)));
  NURI_LAUNCH((mm::bias_partial_kernel<T>), grid, dim3(mm::kBiasThreads),
              size_t(mm::kBiasThreads) * sizeof(float), stream, p);
  NURI_LAUNCH((mm::bias_final_kernel<T>), dim3(unsigned(ceil_div(p.n, mm::kBiasThreads))),
              dim3(mm::kBiasThreads), 0, stream, p);
}

#define NURI_MATMUL_INSTANTIATE(T)                                                             \
  template void matmul_forward<T>(const MatmulParams<T>&, cudaStream_t);                       \
  template void matmul_backward_input<T>(const MatmulBackwardInputParams<T>&, cudaStream_t);   \
  template void matmul_backward_weight<T>(const MatmulBackwardWeightParams<T>&, cudaStream_t); \
  template void matmul_backward_bias<T>(const MatmulBackwardBiasParams<T>&, cudaStream_t);
NURI_MATMUL_INSTANTIATE(float)
NURI_MATMUL_INSTANTIATE(__nv_bfloat16)
NURI_MATMUL_INSTANTIATE(__half)
#undef NURI_MATMUL_INSTANTIATE

}  // namespace nuri::kernels
