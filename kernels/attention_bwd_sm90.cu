// Instantiation unit of the sm_90a attention backward (attention_bwd_sm90.cuh): Di by the
// sm_80-class preprocess kernel, then the dK/dV and dQ kernels, each with its tensor maps. No
// atomics: the results are the same bits whatever the block order, in either dq mode.
#include "attention_bwd_sm90.cuh"

#include "attention_bwd.cuh"  // attn::backward_di

namespace nuri::kernels {

namespace {

/// The parameters of the dK/dV and dQ kernels, their tensor maps made (the first one the
/// driver refused named in maps.why, and then nothing may be launched).
template <class T, int D>
struct BackwardLaunch {
  attn90::TensorMaps maps;
  AttnBwdSm90Params<T> kv, q;

  BackwardLaunch(const AttentionParams<T>& p, const float* di) {
    using Cfg = AttnBwdSm90Config<D>;
    // dK/dV: the block's K, V (kBlock rows) and the Q, dO tiles it walks (kTile rows); dQ the
    // other way round.
    make(kv, p, di, Cfg::kBlock, Cfg::kTile);
    make(q, p, di, Cfg::kTile, Cfg::kBlock);
  }

  /// prm with the maps of K and V in boxes of kv_rows rows, Q and dO of q_rows.
  void make(AttnBwdSm90Params<T>& prm, const AttentionParams<T>& p, const float* di, int kv_rows,
            int q_rows) {
    prm.p = p;
    prm.di = di;
    prm.k_map = maps(p.k, p.k_s, p.batch, p.seq, p.kv_heads, D, kv_rows, "k");
    prm.v_map = maps(p.v, p.v_s, p.batch, p.seq, p.kv_heads, D, kv_rows, "v");
    prm.q_map = maps(p.q, p.q_s, p.batch, p.seq, p.heads, D, q_rows, "q");
    prm.do_map = maps(p.dout, p.dout_s, p.batch, p.seq, p.heads, D, q_rows, "dout");
  }

  template <bool kCausal>
  void run(cudaStream_t stream) const {
    using Cfg = AttnBwdSm90Config<D>;
    const AttentionParams<T>& p = kv.p;
    const dim3 kv_grid(unsigned(ceil_div(p.seq, Cfg::kBlock)), unsigned(p.kv_heads),
                       unsigned(p.batch));
    NURI_LAUNCH((attn_bwd_dkdv_sm90_kernel<T, D, kCausal>), kv_grid, dim3(Cfg::kThreads),
                Cfg::kSmemBytes, stream, kv);
    const dim3 q_grid(unsigned(ceil_div(p.seq, Cfg::kBlock)), unsigned(p.heads), unsigned(p.batch));
    NURI_LAUNCH((attn_bwd_dq_sm90_kernel<T, D, kCausal>), q_grid, dim3(Cfg::kThreads),
                Cfg::kSmemBytes, stream, q);
  }
};

/// Di by the preprocess kernel, then the two passes; or, launching nothing, why the maps were
/// refused.
template <class T, int D>
std::string launch_backward_sm90(const AttentionParams<T>& p, float* di, cudaStream_t stream) {
  const BackwardLaunch<T, D> launch(p, di);
  if (!launch.maps.why.empty()) return launch.maps.why;
  attn::backward_di(p, di, stream);
  if (p.causal) {
    launch.template run<true>(stream);
  } else {
    launch.template run<false>(stream);
  }
  return "";
}

}  // namespace

template <class T>
std::string attention_backward_sm90(const AttentionParams<T>& p, void* workspace,
                                    cudaStream_t stream) {
  NURI_CHECK(p.batch > 0 && p.seq > 0 && p.heads > 0 && p.kv_heads > 0 &&
                 p.heads % p.kv_heads == 0,
             "attention backward kernel (sm_90): bad shape (B ", p.batch, ", T ", p.seq, ", H ",
             p.heads, ", Hkv ", p.kv_heads, ")");
  NURI_CHECK(sm90a_compiled(), "attention backward kernel (sm_90): this build has no "
             "sm_90a code; add 90a to CMAKE_CUDA_ARCHITECTURES, or use NURI_ATTENTION=nuri");
  NURI_CHECK(workspace != nullptr, "attention backward kernel (sm_90): no workspace given");
  float* di = static_cast<float*>(workspace);
  switch (p.head_dim) {  // one line per head dim of kAttentionHeadDims
    case 64: return launch_backward_sm90<T, 64>(p, di, stream);
    case 128: return launch_backward_sm90<T, 128>(p, di, stream);
    default: break;
  }
  NURI_CHECK(false, "attention backward kernel (sm_90): head_dim ", p.head_dim,
             " is not compiled");
  return "";
}

template std::string attention_backward_sm90<__nv_bfloat16>(
    const AttentionParams<__nv_bfloat16>&, void*, cudaStream_t);
template std::string attention_backward_sm90<__half>(const AttentionParams<__half>&, void*,
                                                     cudaStream_t);

}  // namespace nuri::kernels
