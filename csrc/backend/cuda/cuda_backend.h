// The CUDA backend: host code that validates arguments, picks a kernel instantiation and launches
// it (kernels/). Built twice from the same sources: with nvcc against the CUDA runtime ("cuda"),
// and with g++ against the emulator kernels/emu ("cuda-emu"), which is how CI tests it.
//
// Dtypes (the precision recipe of ../shared/DESIGN.md):
//  - activations and the weights used for compute: bf16 (f32 is accepted too, for tests and
//    small models; the matmul ops and attention also take f16, attention no f32); all
//    activation arguments of one call share one dtype;
//  - saved statistics (mean, rstd, lse, per-row losses, the loss): f32;
//  - parameter gradients (dweight, dbias, dwte, dwpe) and every AdamW tensor: f32 (master
//    weights and optimizer state), with an optional bf16 copy of the updated parameter.
// Each op family is defined in its own file (norm.cpp, activation.cpp, ...), like cpu/.
#pragma once

#include <cuda_runtime.h>

#include <map>
#include <string>
#include <vector>

#include "backend/cuda/allocator.h"
#include "nuri/backend/backend.h"

namespace nuri {

namespace cuda {
class CublasLt;  // cublaslt.h (real CUDA builds only)
}

/// Which implementation runs the linear-layer products (matmul and its three backward ops):
/// nuri's kernels (kernels/matmul.cu; sm90: its sm_90a one), cuBLASLt (real CUDA builds), or a
/// per-call choice. The environment variable NURI_GEMM=auto|nuri|sm90|cublaslt sets it when the
/// backend is created;
/// NURI_GEMM_TILES=256|128|64 forces the tile shape of nuri's tensor-core kernel (128 × 256, 128²
/// or 64²; default: by shape, kernels/matmul.h matmul_tiles), for tests and tuning;
/// NURI_GEMM_SM90_GRID=persistent|tiles the sm_90a kernel's grid (default persistent; tiles: a
/// block a tile, for measuring the difference).
enum class GemmPath { automatic, nuri, sm90, cublaslt };
const char* gemm_path_name(GemmPath p);
/// "auto", "nuri", "sm90" or "cublaslt" → GemmPath; nuri::Error naming the accepted values otherwise.
GemmPath parse_gemm_path(const std::string& s);

/// Which implementation runs the fused attention ops: nuri's sm_80-class kernels
/// (kernels/attention_fwd.cuh, attention_bwd.cuh; every GPU), the same with the forward on
/// 128-row query blocks (nuri128: FlashAttention-2's A100 tile shape), nuri's sm_90a kernels
/// (kernels/attention_fwd_sm90.cuh, attention_bwd_sm90.cuh; H100/H200 in builds with 90a, and
/// the emulator), cuDNN's fused attention (cudnn_attention.h: real CUDA builds that found the
/// cuDNN frontend), or per shape by measurement.
/// NURI_ATTENTION=auto|nuri|nuri128|sm90|cudnn sets it when the backend is created.
enum class AttentionPath { automatic, nuri, nuri128, sm90, cudnn };
const char* attention_path_name(AttentionPath p);
/// "auto", "nuri", "nuri128", "sm90" or "cudnn" → AttentionPath; nuri::Error naming the accepted
/// values otherwise.
AttentionPath parse_attention_path(const std::string& s);

class CudaBackend final : public Backend {
 public:
  /// Throws nuri::Error when no CUDA device is present (the message says what was found).
  explicit CudaBackend(int device = 0);
  ~CudaBackend() override;
  std::string name() const override;
  Device device() const override { return Device::cuda(device_); }
  std::shared_ptr<Allocator> allocator() const override { return alloc_; }
  void synchronize() override;
  DType compute_dtype() const override { return DType::bf16; }
  bool attention_head_dim_supported(int64_t head_dim) const override;
  /// The backend's stream, its device made the calling thread's current one first (use_device):
  /// every op goes through here, from whatever thread calls it.
  cudaStream_t stream() const {
    use_device(device_);
    return stream_;
  }

  void zero(const Tensor& t) override;
  void copy(const Tensor& src, const Tensor& dst) override;

  void matmul(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y,
              Activation act, const Tensor& pre,
              const Tensor& residual) override;
  void matmul_backward_input(const Tensor& dy, const Tensor& w, const Tensor& dx, bool accumulate,
                             const Tensor& gelu_pre) override;
  void matmul_backward_weight(const Tensor& dy, const Tensor& x, const Tensor& dw,
                              bool accumulate) override;
  void matmul_backward_bias(const Tensor& dy, const Tensor& dbias, bool accumulate) override;

  void gelu(const Tensor& x, const Tensor& y) override;
  void gelu_backward(const Tensor& x, const Tensor& dy, const Tensor& dx) override;
  void swiglu(const Tensor& x, const Tensor& y) override;
  void swiglu_backward(const Tensor& x, const Tensor& dy, const Tensor& dx) override;

  void embedding(const Tensor& tokens, const Tensor& wte, const Tensor& wpe,
                 const Tensor& positions, const Tensor& out) override;
  void embedding_backward(const Tensor& tokens, const Tensor& dout, const Tensor& dwte,
                          const Tensor& dwpe, const Tensor& positions, bool accumulate) override;
  void embedding_shard(const Tensor& tokens, const Tensor& wte, const Tensor& wpe,
                       const Tensor& positions, const Tensor& out, int64_t row_lo,
                       int64_t vocab_size) override;
  void embedding_shard_backward(const Tensor& tokens, const Tensor& dout, const Tensor& dwte,
                                const Tensor& dwpe, const Tensor& positions, int64_t row_lo,
                                int64_t vocab_size, bool accumulate) override;

  void layernorm(const Tensor& x, const Tensor& residual, const Tensor& weight, const Tensor& bias,
                 float eps, const Tensor& sum, const Tensor& y, const Tensor& mean,
                 const Tensor& rstd) override;
  void layernorm_backward(const Tensor& dy, const Tensor& s, const Tensor& weight,
                          const Tensor& mean, const Tensor& rstd, const Tensor& dsum,
                          const Tensor& ds, const Tensor& dweight, const Tensor& dbias,
                          bool accumulate) override;
  void rmsnorm(const Tensor& x, const Tensor& residual, const Tensor& weight, float eps,
               const Tensor& sum, const Tensor& y, const Tensor& rstd) override;
  void rmsnorm_backward(const Tensor& dy, const Tensor& s, const Tensor& weight,
                        const Tensor& rstd, const Tensor& dsum, const Tensor& ds,
                        const Tensor& dweight, bool accumulate) override;

  void rope(const Tensor& x, const Tensor& y, const Rope& rope, int64_t pos_offset) override;
  void rope_backward(const Tensor& dy, const Tensor& dx, const Rope& rope,
                     int64_t pos_offset) override;

  void attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                 const Tensor& lse, const AttentionOptions& opt) override;
  void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                          const Tensor& lse, const Tensor& dout, const Tensor& dq,
                          const Tensor& dk, const Tensor& dv,
                          const AttentionOptions& opt) override;
  void attention_decode(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const AttentionOptions& opt) override;

  void cross_entropy(const Tensor& logits, const Tensor& targets, int64_t vocab_size,
                     int32_t ignore_index, const Tensor& losses, const Tensor& lse,
                     const Tensor& loss) override;
  void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse,
                              int64_t vocab_size, int32_t ignore_index, float dloss,
                              const Tensor& dlogits) override;
  void cross_entropy_shard(const Tensor& logits, const Tensor& targets, int64_t vocab_size,
                           int32_t ignore_index, int64_t col_lo, const Tensor& losses,
                           const Tensor& lse) override;
  void cross_entropy_merge(const Tensor& part_lse, const Tensor& part_losses, const Tensor& targets,
                           int32_t ignore_index, const Tensor& losses, const Tensor& lse,
                           const Tensor& loss) override;
  void cross_entropy_shard_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse,
                                    int64_t vocab_size, int32_t ignore_index, int64_t col_lo,
                                    float dloss, const Tensor& dlogits) override;

  void global_norm(const std::vector<Tensor>& grads, const Tensor& out) override;
  void adamw(const std::vector<AdamWTensor>& tensors, const AdamWParams& hp) override;

  /// automatic: cuBLASLt in real builds (measured faster, matmul.cpp use_cublaslt), nuri's
  /// kernels under emulation; nuri: always nuri's mma.sync (and f32 SIMT) kernels; sm90: nuri's
  /// sm_90a kernel (wgmma and TMA) for every bf16/f16 product it takes (operand rows 16-byte
  /// aligned, K > 0), nuri's other kernels for the rest (an error where the device or build has
  /// no sm_90a, as for the attention path sm90); cublaslt: every product cuBLASLt takes through
  /// cuBLASLt (real CUDA builds only: the emulated build has no cuBLASLt and refuses it). A call
  /// cuBLASLt declines runs on nuri's kernel and is counted in gemm_fallbacks().
  void set_gemm_path(GemmPath p);
  GemmPath gemm_path() const { return gemm_path_; }
  /// Products cuBLASLt has run, and products meant for it that nuri's kernel ran instead.
  int64_t cublaslt_calls() const;
  int64_t gemm_fallbacks() const { return gemm_fallbacks_; }
  /// Products nuri's sm_90a GEMM kernel has run.
  int64_t sm90_gemm_calls() const { return sm90_gemm_calls_; }
  /// NURI_GEMM_SM90_GRID=tiles: the sm_90a GEMM launched a block a tile, not persistent.
  bool gemm_sm90_per_tile() const { return gemm_sm90_per_tile_; }

  /// automatic: the first call of each direction, shape, layout and options runs every
  /// implementation this device and build have (nuri's sm_80-class kernels; for the forward the
  /// same on 128-row query blocks; the sm_90a kernels on an H100/H200; cuDNN), and later ones
  /// run the fastest of those that agree with nuri's sm_80-class kernels (out and lse, or dq,
  /// dk and dv, within bf16/f16 rounding); on the emulator it is nuri's sm_80-class kernels,
  /// unless NURI_EMU_MEASURE=1 makes it measure as on a GPU (for tests of the measuring: the
  /// emulator times everything at 0 ms, so nuri's kernels keep winning). nuri: those kernels.
  /// nuri128: the forward on 128-row query blocks, the backward nuri's. sm90: the sm_90a kernels
  /// (an error where the device or build has none; dq always without atomics). cudnn: cuDNN,
  /// and an error where it declines (real CUDA builds with the cuDNN frontend only).
  void set_attention_path(AttentionPath p);
  AttentionPath attention_path() const { return attention_path_; }
  /// Attention calls (either direction) cuDNN and the sm_90a kernels have run.
  int64_t cudnn_attention_calls() const { return cudnn_attention_calls_; }
  int64_t sm90_attention_calls() const { return sm90_attention_calls_; }
  /// Whether the sm_90a kernels (attention and GEMM) can run here: an sm_90 device and a build
  /// with 90a, or the emulator.
  bool sm90_usable() const;

  /// Device scratch of at least `bytes`, owned by the backend and reused across calls (valid
  /// until the next workspace() call; ops on one stream run in order, so reuse is safe).
  void* workspace(size_t bytes);

 private:
  int device_;
  cudaStream_t stream_ = nullptr;
  std::shared_ptr<CudaAllocator> alloc_;
  Tensor workspace_;
  GemmPath gemm_path_ = GemmPath::automatic;
  int64_t gemm_fallbacks_ = 0;
  int64_t sm90_gemm_calls_ = 0;
  AttentionPath attention_path_ = AttentionPath::automatic;
  int64_t cudnn_attention_calls_ = 0;
  int64_t sm90_attention_calls_ = 0;
  std::map<std::vector<int64_t>, AttentionPath> attention_choice_;  // automatic: shape → path
  bool emu_measure_ = false;  // NURI_EMU_MEASURE=1 on the emulator: automatic measures
  friend struct AttentionDispatch;                         // attention.cpp
  int gemm_tiles_ = 0;                  // NURI_GEMM_TILES: 0 (by shape), 256, 128 or 64
  bool gemm_sm90_per_tile_ = false;     // NURI_GEMM_SM90_GRID=tiles
  int sm_version_ = 0;                  // compute capability major·10 + minor
  std::shared_ptr<cuda::CublasLt> lt_;  // created on first use (shared_ptr: incomplete type)
  cuda::CublasLt& cublaslt();
  bool use_cublaslt(DType dt) const;
  /// One product p (a kernels/matmul.h parameter struct) on the path gemm_path_ picks.
  template <class P>
  void run_gemm(const char* op, DType dt, int64_t m, int64_t n, int64_t k, const P& p);

  /// Host-to-device copies that return without waiting for the device (a batch's tokens, for
  /// one): the bytes go into the next of kStagingSlots pinned host buffers, the DMA reads them
  /// in stream order, and the slot's event says when it may be refilled. Copies above
  /// kStagingSlots · kStagingSlotBytes are not staged (copy synchronizes for them, as before).
  static constexpr int kStagingSlots = 4;
  static constexpr size_t kStagingSlotBytes = size_t(1) << 20;
  struct StagingSlot {
    void* host = nullptr;        // cudaMallocHost, kStagingSlotBytes
    cudaEvent_t done = nullptr;  // recorded after the DMA that last read `host`
    bool pending = false;        // `done` has been recorded since the slot was last waited on
  };
  std::vector<StagingSlot> staging_;
  int staging_next_ = 0;
  void upload(void* dst, const void* src, size_t bytes);
};

}  // namespace nuri
