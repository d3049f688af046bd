// The linear-layer products of kernels/matmul.h through cuBLASLt (real CUDA builds only).
//
// Layouts. cuBLASLt is column-major: D [m×n] = op(A) [m×k] · op(B) [k×n]. A row-major nuri
// matrix [R][C] (contiguous, row stride C) is, byte for byte, a column-major C×R matrix with
// leading dimension C, i.e. its transpose. So each row-major product is computed as its transpose
// and no data moves:
//   forward  y [M,N] = x [M,K] · W [N,K]ᵀ   ⇔  yᵀ (N×M) = W (as K×N)ᵀ · x (as K×M)
//            A = W: K×N, ld K, TRANSA = T;  B = x: K×M, ld K, N;  D = y: N×M, ld N; m,n,k = N,M,K
//            bias [N] is per output column of y = per row of D: cuBLASLt's BIAS epilogue.
//            GELU: GELU_AUX(_BIAS) writes D = gelu(pre) and aux = pre (N×M, ld N = pre [M][N]).
//            residual [M,N]: C (N×M, ld N) with beta = 1, which cuBLASLt adds before the
//            epilogue's activation: so without GELU only.
//   dgrad    dx [M,K] = dy [M,N] · W [N,K]    ⇔  dxᵀ (K×M) = W (as K×N) · dy (as N×M)
//            A = W: K×N, ld K, N;  B = dy: N×M, ld N, N;  D = dx: K×M, ld K;  m,n,k = K,M,N
//            fused GELU backward: DGELU, aux = gelu_pre (K×M, ld K = gelu_pre [M][K]), input.
//            accumulate: beta = 1 with C = D = dx.
//   wgrad    dW [N,K] = dy [M,N]ᵀ · x [M,K]   ⇔  dWᵀ (K×N) = x (as K×M) · dy (as N×M)ᵀ
//            A = x: K×M, ld K, N;  B = dy: N×M, ld N, TRANSB = T;  C = D = dW: K×N, ld K, f32;
//            m,n,k = K,N,M; beta = accumulate.
//   dbias    dbias [N] = Σ_m dy [m][n]         ⇔  dbias (N×1) = dy (as N×M) · ones (M×1)
//            A = dy: N×M, ld N, N;  B = ones: M×1, ld M, N;  C = D = dbias: N×1, f32;
//            m,n,k = N,1,M; beta = accumulate.
//
// Precision: compute CUBLAS_COMPUTE_32F and f32 scale type for every dtype (bf16/f16 inputs
// accumulate in f32; f32 inputs stay f32: no TF32, which needs CUBLAS_COMPUTE_32F_FAST_TF32).
//
// GELU: cuBLASLt documents its epilogues only as "x := GELU(x)" (cublasLt.h, cublasLtEpilogue_t;
// the cuBLAS docs say the same) without a formula. PyTorch relies on it being the tanh
// approximation: aten/src/ATen/native/cuda/Blas.cpp applies at::gelu_(result, "tanh") on the
// paths where the cublasLt GELU epilogue could not be used, as the same activation. nuri's GELU
// is that tanh form (kernels/activation.cuh act::gelu), so the epilogues are used; the op tests
// registered as cublaslt.* compare them with the tanh formula in float64 on a GPU.
// On an H100 (2026-11-23, cuBLASLt 13.0) those tests showed the epilogues are not f32-accurate:
// in f32 the DGELU epilogue's dx differed from the plain product followed by nuri's GELU
// backward by up to 4.9e-6 of the largest |dx| (2.0e-4 at an element of 3.84, which is 5e-5 of
// it: hundreds of f32 roundings), although both stayed within 1e-5·sqrt(N) of float64. So f32 products with a GELU epilogue are declined
// (nuri's kernel runs them); bf16/f16 keep the epilogues, where one output rounding (2^-9) is
// far larger than that difference.
// The aux matrix (pre-activation) has the output's dtype and an ld that must be a multiple of 8
// (cublasLt.h, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD): a GELU call with N (forward) or K (dgrad)
// not a multiple of 8 returns false.
#include "backend/cuda/cublaslt.h"

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <mutex>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "cuda_check.h"
#include "nuri/core/error.h"

namespace nuri::cuda {

namespace {

constexpr size_t kWorkspaceBytes = size_t(32) << 20;  // NVIDIA's recommendation for Hopper

const char* status_name(cublasStatus_t s) { return cublasLtGetStatusName(s); }

template <class T>
constexpr cudaDataType_t data_type() {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return CUDA_R_16BF;
  if constexpr (std::is_same_v<T, __half>) return CUDA_R_16F;
  if constexpr (std::is_same_v<T, float>) return CUDA_R_32F;
}

template <class T>
constexpr const char* dtype_name() {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return "bf16";
  if constexpr (std::is_same_v<T, __half>) return "f16";
  if constexpr (std::is_same_v<T, float>) return "f32";
}

enum class Op : uint8_t { forward, backward_input, backward_weight, backward_bias };

const char* op_name(Op op) {
  switch (op) {
    case Op::forward:
      return "forward";
    case Op::backward_input:
      return "backward_input";
    case Op::backward_weight:
      return "backward_weight";
    case Op::backward_bias:
      return "backward_bias";
  }
  return "?";
}

/// log2 of a pointer's alignment, capped at 256 bytes (cuBLASLt's largest requirement); a null
/// pointer counts as fully aligned.
uint8_t align_log2(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  uint8_t l = 0;
  while (l < 8 && a != 0 && ((a >> l) & 1u) == 0) ++l;
  return a == 0 ? 8 : l;
}

/// One product in cuBLASLt's column-major terms (see the file comment), plus nuri's shape for
/// messages.
struct Product {
  Op op;
  const char* dtype;
  int64_t M, N, K;                  // nuri's shape, for messages
  cudaDataType_t ab_type, cd_type;  // A and B; C and D
  cublasOperation_t ta, tb;
  uint64_t m, n, k;  // D is m×n, the contraction k
  const void* a;
  int64_t lda;
  const void* b;
  int64_t ldb;
  void* d;
  const void* c = nullptr;  // C when beta != 0, with D's layout; null: C is D
  int64_t ldd;
  float beta;
  cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  const void* bias = nullptr;
  void* aux = nullptr;
  int64_t aux_ld = 0;
};

/// The cache key: op, types, epilogue and beta != 0; m, n, k; the pointers' alignments.
using Key = std::array<uint64_t, 5>;

struct KeyHash {
  size_t operator()(const Key& k) const {
    uint64_t h = 1469598103934665603ull;  // FNV-1a over the words
    for (uint64_t w : k) h = (h ^ w) * 1099511628211ull;
    return size_t(h);
  }
};

/// The descriptors and algorithm of one cached product; supported = false caches a refusal.
struct Plan {
  bool supported = false;
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};

  Plan() = default;
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;
  ~Plan() {
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (d) cublasLtMatrixLayoutDestroy(d);
    if (desc) cublasLtMatmulDescDestroy(desc);
  }
};

bool has_bias(cublasLtEpilogue_t e) {
  return e == CUBLASLT_EPILOGUE_BIAS || e == CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
}
bool has_aux(cublasLtEpilogue_t e) {
  return e == CUBLASLT_EPILOGUE_GELU_AUX || e == CUBLASLT_EPILOGUE_GELU_AUX_BIAS ||
         e == CUBLASLT_EPILOGUE_DGELU;
}

}  // namespace

struct CublasLt::Impl {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  std::mutex mutex;  // the cache and the per-call pointer attributes of a cached descriptor
  std::unordered_map<Key, std::unique_ptr<Plan>, KeyHash> plans;
  struct Ones {
    void* ptr = nullptr;
    int64_t count = 0;
  };
  std::unordered_map<int, Ones> ones;  // by cudaDataType_t: a device vector of ones
  std::atomic<int64_t> calls{0};

  ~Impl() {
    plans.clear();
    for (auto& [type, o] : ones) cudaFree(o.ptr);
    if (workspace) cudaFree(workspace);
    if (handle) cublasLtDestroy(handle);
  }

  /// Throws for any status but success, naming the call and the product.
  static void check(cublasStatus_t s, const char* call, const Product& p) {
    NURI_CHECK(s == CUBLAS_STATUS_SUCCESS, "cuBLASLt: ", call, " failed (", status_name(s),
               ") for ", op_name(p.op), " ", p.dtype, " M=", p.M, " N=", p.N,
               p.op == Op::backward_bias ? "" : " K=",
               p.op == Op::backward_bias ? "" : std::to_string(p.K));
  }

  /// The plan of p: from the cache, or built (descriptors, heuristic) and cached.
  Plan& plan_for(const Product& p) {
    const uint8_t align[5] = {align_log2(p.a), align_log2(p.b), std::min(align_log2(p.d), align_log2(p.c)), align_log2(p.bias),
                              align_log2(p.aux)};
    const Key key = {uint64_t(p.op) | uint64_t(p.ab_type) << 8 | uint64_t(p.cd_type) << 16 |
                         uint64_t(p.beta != 0.0f) << 24 | uint64_t(p.epilogue) << 32,
                     p.m, p.n, p.k,
                     uint64_t(align[0]) | uint64_t(align[1]) << 8 | uint64_t(align[2]) << 16 |
                         uint64_t(align[3]) << 24 | uint64_t(align[4]) << 32};
    auto it = plans.find(key);
    if (it != plans.end()) return *it->second;

    auto plan = std::make_unique<Plan>();
    Plan& pl = *plan;
    check(cublasLtMatmulDescCreate(&pl.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F),
          "cublasLtMatmulDescCreate", p);
    auto set = [&](cublasLtMatmulDescAttributes_t attr, const void* v, size_t size) {
      check(cublasLtMatmulDescSetAttribute(pl.desc, attr, v, size),
            "cublasLtMatmulDescSetAttribute", p);
    };
    set(CUBLASLT_MATMUL_DESC_TRANSA, &p.ta, sizeof p.ta);
    set(CUBLASLT_MATMUL_DESC_TRANSB, &p.tb, sizeof p.tb);
    set(CUBLASLT_MATMUL_DESC_EPILOGUE, &p.epilogue, sizeof p.epilogue);
    // The heuristic reads the epilogue pointers' values for their alignment.
    if (has_bias(p.epilogue)) set(CUBLASLT_MATMUL_DESC_BIAS_POINTER, &p.bias, sizeof p.bias);
    if (has_aux(p.epilogue)) {
      set(CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &p.aux, sizeof p.aux);
      set(CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &p.aux_ld, sizeof p.aux_ld);
    }
    const bool a_n = p.ta == CUBLAS_OP_N, b_n = p.tb == CUBLAS_OP_N;
    check(cublasLtMatrixLayoutCreate(&pl.a, p.ab_type, a_n ? p.m : p.k, a_n ? p.k : p.m, p.lda),
          "cublasLtMatrixLayoutCreate (A)", p);
    check(cublasLtMatrixLayoutCreate(&pl.b, p.ab_type, b_n ? p.k : p.n, b_n ? p.n : p.k, p.ldb),
          "cublasLtMatrixLayoutCreate (B)", p);
    check(cublasLtMatrixLayoutCreate(&pl.d, p.cd_type, p.m, p.n, p.ldd),
          "cublasLtMatrixLayoutCreate (C, D)", p);

    cublasLtMatmulPreference_t pref = nullptr;
    check(cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate", p);
    std::unique_ptr<std::remove_pointer_t<cublasLtMatmulPreference_t>,
                    decltype(&cublasLtMatmulPreferenceDestroy)>
        pref_owner(pref, &cublasLtMatmulPreferenceDestroy);
    auto set_pref = [&](cublasLtMatmulPreferenceAttributes_t attr, uint64_t v32or64, bool u64) {
      const uint32_t v32 = uint32_t(v32or64);
      check(u64 ? cublasLtMatmulPreferenceSetAttribute(pref, attr, &v32or64, sizeof v32or64)
                : cublasLtMatmulPreferenceSetAttribute(pref, attr, &v32, sizeof v32),
            "cublasLtMatmulPreferenceSetAttribute", p);
    };
    set_pref(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, kWorkspaceBytes, true);
    set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, 1u << align[0], false);
    set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, 1u << align[1], false);
    set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, 1u << align[2], false);
    set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, 1u << align[2], false);

    cublasLtMatmulHeuristicResult_t result{};
    int returned = 0;
    const cublasStatus_t s = cublasLtMatmulAlgoGetHeuristic(handle, pl.desc, pl.a, pl.b, pl.d, pl.d,
                                                            pref, 1, &result, &returned);
    if (s == CUBLAS_STATUS_NOT_SUPPORTED || (s == CUBLAS_STATUS_SUCCESS && returned == 0)) {
      pl.supported = false;  // cached: the next call with this key returns false at once
    } else {
      check(s, "cublasLtMatmulAlgoGetHeuristic", p);
      pl.supported = result.state == CUBLAS_STATUS_SUCCESS;
      pl.algo = result.algo;
    }
    return *plans.emplace(key, std::move(plan)).first->second;
  }

  /// Enqueues p (true) or, when cuBLASLt has no algorithm for it, does nothing (false).
  bool run(const Product& p, cudaStream_t stream) {
    if (p.m == 0 || p.n == 0 || p.k == 0) return false;  // empty: the backend's kernels handle it
    if (has_aux(p.epilogue) && p.aux_ld % 8 != 0) return false;  // AUX_LD must be a multiple of 8
    std::lock_guard<std::mutex> lock(mutex);
    Plan& pl = plan_for(p);
    if (!pl.supported) return false;
    auto set = [&](cublasLtMatmulDescAttributes_t attr, const void* v, size_t size) {
      check(cublasLtMatmulDescSetAttribute(pl.desc, attr, v, size),
            "cublasLtMatmulDescSetAttribute", p);
    };
    if (has_bias(p.epilogue)) set(CUBLASLT_MATMUL_DESC_BIAS_POINTER, &p.bias, sizeof p.bias);
    if (has_aux(p.epilogue)) set(CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &p.aux, sizeof p.aux);
    const float alpha = 1.0f;
    const cublasStatus_t s =
        cublasLtMatmul(handle, pl.desc, &alpha, p.a, pl.a, p.b, pl.b, &p.beta, p.c ? p.c : p.d, pl.d, p.d, pl.d,
                       &pl.algo, workspace, kWorkspaceBytes, stream);
    if (s == CUBLAS_STATUS_NOT_SUPPORTED) return false;
    check(s, "cublasLtMatmul", p);
    calls.fetch_add(1, std::memory_order_relaxed);
    return true;
  }

  /// A device vector of at least m ones of type T (grown when needed; filled once per size).
  template <class T>
  const T* ones_for(int64_t m, cudaStream_t stream) {
    std::lock_guard<std::mutex> lock(mutex);
    Ones& o = ones[int(data_type<T>())];
    if (o.count < m) {
      const int64_t count = std::max(m, 2 * o.count);
      // Products queued earlier may still read the old vector.
      if (o.ptr) {
        NURI_CUDA_CHECK(cudaStreamSynchronize(stream));
        NURI_CUDA_CHECK(cudaFree(o.ptr));
        o = Ones{};
      }
      NURI_CUDA_CHECK(cudaMalloc(&o.ptr, size_t(count) * sizeof(T)));
      o.count = count;
      const std::vector<T> host(size_t(count), T(1.0f));
      NURI_CUDA_CHECK(cudaMemcpyAsync(o.ptr, host.data(), host.size() * sizeof(T),
                                      cudaMemcpyHostToDevice, stream));
      NURI_CUDA_CHECK(cudaStreamSynchronize(stream));  // `host` goes out of scope
    }
    return static_cast<const T*>(o.ptr);
  }
};

CublasLt::CublasLt() : impl_(std::make_unique<Impl>()) {
  const cublasStatus_t s = cublasLtCreate(&impl_->handle);
  NURI_CHECK(s == CUBLAS_STATUS_SUCCESS, "cuBLASLt: cublasLtCreate failed (", status_name(s), ")");
  NURI_CUDA_CHECK(cudaMalloc(&impl_->workspace, kWorkspaceBytes));
}

CublasLt::~CublasLt() = default;

int64_t CublasLt::calls() const { return impl_->calls.load(std::memory_order_relaxed); }

// The four products, in cuBLASLt's terms (see the file comment for the derivations).
template <class T>
bool CublasLt::forward(const kernels::MatmulParams<T>& p, cudaStream_t stream) {
  // yᵀ (N×M) = W (K×N)ᵀ · x (K×M)
  // clang-format off
  Product q{.op = Op::forward, .dtype = dtype_name<T>(), .M = p.m, .N = p.n, .K = p.k,
            .ab_type = data_type<T>(), .cd_type = data_type<T>(),
            .ta = CUBLAS_OP_T, .tb = CUBLAS_OP_N,
            .m = uint64_t(p.n), .n = uint64_t(p.m), .k = uint64_t(p.k),
            .a = p.gW, .lda = p.k, .b = p.gX, .ldb = p.k, .d = p.gY, .ldd = p.n,
            .beta = 0.0f, .bias = p.gBias};
  // clang-format on
  if (p.gelu && std::is_same_v<T, float>) return false;  // not f32-accurate (see the top)
  if (p.gResidual) {
    // D = epilogue(A·B + beta·C): the residual enters before the activation, so only
    // y = x·Wᵀ (+ bias) + residual maps (C = residual, beta = 1); with GELU nuri's kernel runs.
    if (p.gelu) return false;
    q.beta = 1.0f;
    q.c = p.gResidual;
  }
  if (p.gelu) {
    q.epilogue = p.gBias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX;
    q.aux = p.gPre;  // pre [M, N] = N×M, ld N
    q.aux_ld = p.n;
  } else if (p.gBias) {
    q.epilogue = CUBLASLT_EPILOGUE_BIAS;
  }
  return impl_->run(q, stream);
}

template <class T>
bool CublasLt::backward_input(const kernels::MatmulBackwardInputParams<T>& p, cudaStream_t stream) {
  // dxᵀ (K×M) = W (K×N) · dy (N×M)
  // clang-format off
  Product q{.op = Op::backward_input, .dtype = dtype_name<T>(), .M = p.m, .N = p.n, .K = p.k,
            .ab_type = data_type<T>(), .cd_type = data_type<T>(),
            .ta = CUBLAS_OP_N, .tb = CUBLAS_OP_N,
            .m = uint64_t(p.k), .n = uint64_t(p.m), .k = uint64_t(p.n),
            .a = p.gW, .lda = p.k, .b = p.gDy, .ldb = p.n, .d = p.gDx, .ldd = p.k,
            .beta = p.accumulate ? 1.0f : 0.0f};
  // clang-format on
  if (p.gGeluPre) {
    if (p.accumulate) return false;  // DGELU would scale C too; the backend never asks for this
    if (std::is_same_v<T, float>) return false;  // not f32-accurate (see the top)
    q.epilogue = CUBLASLT_EPILOGUE_DGELU;
    q.aux = const_cast<T*>(p.gGeluPre);  // an input for DGELU: gelu_pre [M, K] = K×M, ld K
    q.aux_ld = p.k;
  }
  return impl_->run(q, stream);
}

template <class T>
bool CublasLt::backward_weight(const kernels::MatmulBackwardWeightParams<T>& p,
                               cudaStream_t stream) {
  // dWᵀ (K×N, f32) (+)= x (K×M) · dy (N×M)ᵀ
  // clang-format off
  const Product q{.op = Op::backward_weight, .dtype = dtype_name<T>(), .M = p.m, .N = p.n,
                  .K = p.k, .ab_type = data_type<T>(), .cd_type = CUDA_R_32F,
                  .ta = CUBLAS_OP_N, .tb = CUBLAS_OP_T,
                  .m = uint64_t(p.k), .n = uint64_t(p.n), .k = uint64_t(p.m),
                  .a = p.gX, .lda = p.k, .b = p.gDy, .ldb = p.n, .d = p.gDw, .ldd = p.k,
                  .beta = p.accumulate ? 1.0f : 0.0f};
  // clang-format on
  return impl_->run(q, stream);
}

template <class T>
bool CublasLt::backward_bias(const kernels::MatmulBackwardBiasParams<T>& p, cudaStream_t stream) {
  if (p.m <= 0 || p.n <= 0) return false;
  // dbias (N×1, f32) (+)= dy (N×M) · ones (M×1)
  const T* ones = impl_->ones_for<T>(p.m, stream);
  // clang-format off
  const Product q{.op = Op::backward_bias, .dtype = dtype_name<T>(), .M = p.m, .N = p.n, .K = 0,
                  .ab_type = data_type<T>(), .cd_type = CUDA_R_32F,
                  .ta = CUBLAS_OP_N, .tb = CUBLAS_OP_N,
                  .m = uint64_t(p.n), .n = 1, .k = uint64_t(p.m),
                  .a = p.gDy, .lda = p.n, .b = ones, .ldb = p.m, .d = p.gDbias, .ldd = p.n,
                  .beta = p.accumulate ? 1.0f : 0.0f};
  // clang-format on
  return impl_->run(q, stream);
}

#define NURI_CUBLASLT_INSTANTIATE(T)                                                        \
  template bool CublasLt::forward<T>(const kernels::MatmulParams<T>&, cudaStream_t);        \
  template bool CublasLt::backward_input<T>(const kernels::MatmulBackwardInputParams<T>&,   \
                                            cudaStream_t);                                  \
  template bool CublasLt::backward_weight<T>(const kernels::MatmulBackwardWeightParams<T>&, \
                                             cudaStream_t);                                 \
  template bool CublasLt::backward_bias<T>(const kernels::MatmulBackwardBiasParams<T>&,     \
                                           cudaStream_t);
NURI_CUBLASLT_INSTANTIATE(__nv_bfloat16)
NURI_CUBLASLT_INSTANTIATE(__half)
NURI_CUBLASLT_INSTANTIATE(float)
#undef NURI_CUBLASLT_INSTANTIATE

}  // namespace nuri::cuda
