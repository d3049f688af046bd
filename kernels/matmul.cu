// Instantiation unit of the linear-layer kernels: T = __nv_bfloat16 and __half on tensor cores,
// float on the SIMT kernel; the three product layouts, aligned (16-byte cp.async) or not; and the
// sm_90a kernel's tensor maps and launch (matmul_sm90.cuh; under nvcc its body is real only for
// sm_90a, and the host launches it only where sm90a_compiled() on an sm_90 device).
#include <algorithm>

#include "device_info.h"
#include "matmul_sm90.cuh"

namespace nuri::kernels {

namespace {

/// The row tiles of a product of m rows, which go on a launch's grid.y: at most 65535.
unsigned row_tiles(int64_t m, int64_t block) {
  const int64_t tiles = ceil_div(m, block);
  NURI_CHECK(tiles <= 65535, "matmul kernel: ", m, " rows make ", tiles, " row tiles of ", block,
             ", more than the 65535 a launch's grid.y holds; split the product into row chunks "
             "of at most ", 65535 * block, " rows");
  return unsigned(tiles);
}

/// Every row of a [rows][ld] matrix at p starts 16-byte aligned.
template <class T>
bool rows_aligned(const T* p, int64_t ld) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0 && (ld * int64_t(sizeof(T))) % 16 == 0;
}

/// The tensor-core kernel on tiles C, with cp.async tile loads where every row of both operands
/// is 16-byte aligned, else element by element.
template <class C, class T, bool kATrans, bool kBKN>
void launch_tc(const mm::GemmArgs<T>& a, cudaStream_t stream) {
  const bool aligned = rows_aligned(a.a, a.lda) && rows_aligned(a.b, a.ldb);
  if constexpr (std::is_same_v<C, mm::TcWide>) {
    // Rows that are not all 16-byte aligned load element by element, on TcLarge's tiles: a rare
    // path, not worth six more instantiations of the widest kernel.
    if (!aligned) return launch_tc<mm::TcLarge, T, kATrans, kBKN>(a, stream);
  }
  const dim3 grid(unsigned(ceil_div(a.n, C::kBlockN)), row_tiles(a.m, C::kBlockM));
  if (aligned) {
    NURI_LAUNCH((mm::gemm_tc_kernel<C, T, kATrans, kBKN, true>), grid, dim3(C::kThreads),
                C::kSmemBytes, stream, a);
  } else if constexpr (!std::is_same_v<C, mm::TcWide>) {
    NURI_LAUNCH((mm::gemm_tc_kernel<C, T, kATrans, kBKN, false>), grid, dim3(C::kThreads),
                C::kSmemBytes, stream, a);
  }
}

/// The TMA map of an operand stored [outer][inner] with rows `ld` elements apart (16-byte
/// aligned: checked by the caller): boxes of 64 inner elements (one 128-byte swizzle atom) by
/// `box_rows` rows, zero-filled past the matrix. False where the driver refuses it.
template <class T>
bool operand_map(CUtensorMap& m, const T* base, int64_t inner, int64_t outer, int64_t ld,
                 int box_rows) {
  const cuuint64_t dim[2] = {cuuint64_t(inner), cuuint64_t(outer)};
  const cuuint64_t stride[1] = {cuuint64_t(ld) * sizeof(T)};
  const cuuint32_t box[2] = {64, cuuint32_t(box_rows)}, estride[2] = {1, 1};
  const CUtensorMapDataType type = std::is_same_v<T, __half> ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16
                                                              : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
  return sm90::encode_tiled()(&m, type, 2, const_cast<T*>(base), dim, stride, box, estride,
                              CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                              CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
                              CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

/// The sm_90a kernel, where it takes the product: 16-bit types, every row of both operands
/// 16-byte aligned (TMA's rule for the maps' strides and bases, as cuda.h states it), a
/// contraction that is not empty, and both maps made (a driver holding to a stricter rule, as
/// the Programming Guide's 128 bytes for swizzled maps, refuses some). Returns whether it ran.
template <class T, bool kATrans, bool kBKN>
bool launch_sm90(const mm::GemmArgs<T>& a, bool per_tile, cudaStream_t stream) {
  if constexpr (std::is_same_v<T, float>) {
    (void)a, (void)per_tile, (void)stream;
    return false;
  } else {
    if (a.k == 0 || !rows_aligned(a.a, a.lda) || !rows_aligned(a.b, a.ldb)) return false;
    using C = mm::Sm90Config;
    mm::GemmSm90Params<T> prm;
    prm.p = a;
    // A: [M][K] (K-major, 128-row boxes) or stored [K][M] (MN-major, 64-row boxes); B likewise.
    const bool mapped =
        (kATrans ? operand_map(prm.a_map, a.a, a.m, a.k, a.lda, 64)
                 : operand_map(prm.a_map, a.a, a.k, a.m, a.lda, C::kBlockM)) &&
        (kBKN ? operand_map(prm.b_map, a.b, a.n, a.k, a.ldb, 64)
              : operand_map(prm.b_map, a.b, a.k, a.n, a.ldb, C::kBlockN));
    if (!mapped) return false;
    // Persistent: a block an SM (no more fit), or one a tile where there are fewer tiles (or
    // per_tile: the same kernel, each block walking one tile).
    const int64_t tiles = ceil_div(a.n, C::kBlockN) * ceil_div(a.m, C::kBlockM);
    const int64_t blocks =
        per_tile ? tiles : std::min<int64_t>(tiles, current_device_info().sms);
    const dim3 grid(static_cast<unsigned>(blocks));
    NURI_LAUNCH((mm::gemm_sm90_kernel<T, kATrans, kBKN>), grid, dim3(C::kThreads), C::kSmemBytes,
                stream, prm);
    return true;
  }
}

template <class T, bool kATrans, bool kBKN>
bool launch_gemm(const mm::GemmArgs<T>& a, int tiles, bool sm90, bool sm90_per_tile,
                 cudaStream_t stream) {
  NURI_CHECK(a.m > 0 && a.n > 0 && a.k >= 0, "matmul kernel: bad shape (M ", a.m, ", N ", a.n,
             ", K ", a.k, ")");
  if (sm90 && launch_sm90<T, kATrans, kBKN>(a, sm90_per_tile, stream)) return true;
  if constexpr (std::is_same_v<T, float>) {
    using C = mm::SimtConfig;
    const dim3 grid(unsigned(ceil_div(a.n, C::kBlockN)), row_tiles(a.m, C::kBlockM));
    NURI_LAUNCH((mm::gemm_simt_kernel<kATrans, kBKN>), grid, dim3(C::kThreads), C::kSmemBytes,
                stream, a);
  } else {
    switch (matmul_tiles(a.m, a.n, current_device_info().sms, tiles)) {
      case mm::TcWide::kBlockN:
        launch_tc<mm::TcWide, T, kATrans, kBKN>(a, stream);
        break;
      case mm::TcLarge::kBlockN:
        launch_tc<mm::TcLarge, T, kATrans, kBKN>(a, stream);
        break;
      default:
        launch_tc<mm::TcSmall, T, kATrans, kBKN>(a, stream);
    }
  }
  return false;
}

/// The kernels index with int: every dimension must fit (the element offsets are int64).
void check_dims(const char* op, int64_t m, int64_t n, int64_t k) {
  constexpr int64_t kMax = int64_t(1) << 30;
  NURI_CHECK(m < kMax && n < kMax && k < kMax, op, " kernel: dimensions (", m, ", ", n, ", ", k,
             ") exceed 2^30");
}

}  // namespace

int matmul_tiles(int64_t rows, int64_t cols, int sms, int forced) {
  constexpr int kWide = mm::TcWide::kBlockN, kLarge = mm::TcLarge::kBlockN,
                kSmall = mm::TcSmall::kBlockN;
  NURI_CHECK(forced == 0 || forced == kWide || forced == kLarge || forced == kSmall,
             "matmul: tile ", forced, " does not exist (0 to choose, ", kWide, " for ",
             mm::TcWide::kBlockM, "x", kWide, ", ", kLarge, " for ", kLarge, "x", kLarge, ", ",
             kSmall, " for ", kSmall, "x", kSmall, ")");
  if (forced != 0) return forced;
  auto blocks = [&](int64_t bm, int64_t bn) { return ceil_div(rows, bm) * ceil_div(cols, bn); };
  if (blocks(mm::TcWide::kBlockM, kWide) >= sms) return kWide;
  if (blocks(mm::TcLarge::kBlockM, kLarge) >= sms) return kLarge;
  return kSmall;
}

template <class T>
bool matmul_forward(const MatmulParams<T>& p, cudaStream_t stream) {
  check_dims("matmul", p.m, p.n, p.k);
  mm::GemmArgs<T> a{};
  a.a = p.gX, a.lda = p.k, a.b = p.gW, a.ldb = p.k;
  a.m = int(p.m), a.n = int(p.n), a.k = int(p.k);
  a.bias = p.gBias;
  a.pre = p.gelu ? p.gPre : nullptr;
  a.residual = p.gResidual;
  a.out = p.gY;
  return launch_gemm<T, false, false>(a, p.tiles, p.sm90, p.sm90_per_tile, stream);
}

template <class T>
bool matmul_backward_input(const MatmulBackwardInputParams<T>& p, cudaStream_t stream) {
  check_dims("matmul_backward_input", p.m, p.n, p.k);
  mm::GemmArgs<T> a{};  // dx [M, K] = dy [M, N] · W [N, K]: contraction over N
  a.a = p.gDy, a.lda = p.n, a.b = p.gW, a.ldb = p.k;
  a.m = int(p.m), a.n = int(p.k), a.k = int(p.n);
  a.gelu_pre = p.gGeluPre;
  a.out = p.gDx;
  a.accumulate = p.accumulate;
  return launch_gemm<T, false, true>(a, p.tiles, p.sm90, p.sm90_per_tile, stream);
}

template <class T>
bool matmul_backward_weight(const MatmulBackwardWeightParams<T>& p, cudaStream_t stream) {
  check_dims("matmul_backward_weight", p.m, p.n, p.k);
  mm::GemmArgs<T> a{};  // dW [N, K] = dyᵀ [N, M] · x [M, K]: contraction over M
  a.a = p.gDy, a.lda = p.n, a.b = p.gX, a.ldb = p.k;
  a.m = int(p.n), a.n = int(p.k), a.k = int(p.m);
  a.out_f32 = p.gDw;
  a.accumulate = p.accumulate;
  return launch_gemm<T, true, true>(a, p.tiles, p.sm90, p.sm90_per_tile, stream);
}

template <class T>
void matmul_backward_bias(const MatmulBackwardBiasParams<T>& p, cudaStream_t stream) {
  NURI_CHECK(p.m > 0 && p.n > 0, "matmul_backward_bias kernel: bad shape (M ", p.m, ", N ", p.n,
             ")");
  const dim3 grid(unsigned(ceil_div(p.n, mm::kBiasCols)),
                  row_tiles(matmul_bias_partials(p.m), 1));
  NURI_LAUNCH((mm::bias_partial_kernel<T>), grid, dim3(mm::kBiasThreads),
              size_t(mm::kBiasThreads) * sizeof(float), stream, p);
  NURI_LAUNCH((mm::bias_final_kernel<T>), dim3(unsigned(ceil_div(p.n, mm::kBiasThreads))),
              dim3(mm::kBiasThreads), 0, stream, p);
}

#define NURI_MATMUL_INSTANTIATE(T)                                                             \
  template bool matmul_forward<T>(const MatmulParams<T>&, cudaStream_t);                       \
  template bool matmul_backward_input<T>(const MatmulBackwardInputParams<T>&, cudaStream_t);   \
  template bool matmul_backward_weight<T>(const MatmulBackwardWeightParams<T>&, cudaStream_t); \
  template void matmul_backward_bias<T>(const MatmulBackwardBiasParams<T>&, cudaStream_t);
NURI_MATMUL_INSTANTIATE(float)
NURI_MATMUL_INSTANTIATE(__nv_bfloat16)
NURI_MATMUL_INSTANTIATE(__half)
#undef NURI_MATMUL_INSTANTIATE

}  // namespace nuri::kernels
