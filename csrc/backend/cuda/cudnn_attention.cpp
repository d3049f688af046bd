// cuDNN's fused attention through the cuDNN frontend's graph API (cudnn_attention.h). Compiled
// only in real CUDA builds that found the frontend headers; libcudnn is opened at run time
// (NV_CUDNN_FRONTEND_USE_DYNAMIC_LOADING), so its absence is a reason returned, not a link error.
//
// Layouts map one to one: nuri's [B, T, heads, D] views with strides (b, t, h) are cuDNN's
// [B, heads, T, D] tensors with strides (b, h, t, 1); GQA is K and V with fewer heads; nuri's lse
// [B, H, T] (natural-log log-sum-exp of the scaled scores) is the "Stats" output [B, H, T, 1].
#include "backend/cuda/cudnn_attention.h"

#define CUDNN_FRONTEND_SKIP_JSON_LIB
#define NV_CUDNN_FRONTEND_USE_DYNAMIC_LOADING
#include <cudnn_frontend.h>

#include <dlfcn.h>

#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <vector>

// The frontend's dynamic loading calls cuDNN through this handle, which its user opens.
namespace cudnn_frontend {
void* cudnn_dlhandle = nullptr;
}

namespace nuri::cuda {

namespace {

namespace fe = cudnn_frontend;

/// Opens libcudnn once; "" or why it could not be opened.
std::string load_cudnn() {
  if (fe::cudnn_dlhandle) return "";
  std::string errors;
  for (const char* lib : {"libcudnn.so.9", "libcudnn.so"}) {
    fe::cudnn_dlhandle = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
    if (fe::cudnn_dlhandle) return "";
    const char* e = dlerror();
    errors += std::string(errors.empty() ? "" : "; ") + (e ? e : lib);
  }
  return "libcudnn could not be loaded (" + errors + ")";
}

// Tensor uids of the graphs.
enum Uid : int64_t { kQ = 1, kK, kV, kO, kStats, kDO, kDQ, kDK, kDV };

struct Graph {
  std::shared_ptr<fe::graph::Graph> graph;
  int64_t workspace = 0;
  std::string error;  // why cuDNN declined; then graph is null
};

// Everything a graph depends on: dtype, direction, sizes, every stride, scale, options.
using Key = std::vector<int64_t>;

template <class T>
Key key_of(const kernels::AttentionParams<T>& p, bool backward) {
  int32_t scale_bits;
  std::memcpy(&scale_bits, &p.scale, 4);
  Key k{std::is_same_v<T, __half> ? 1 : 0, backward, p.batch, p.seq, p.heads, p.kv_heads,
        p.head_dim, scale_bits, p.causal, backward && p.deterministic};
  for (const kernels::AttnStrides* s :
       {&p.q_s, &p.k_s, &p.v_s, &p.out_s, &p.dout_s, &p.dq_s, &p.dk_s, &p.dv_s}) {
    k.insert(k.end(), {s->b, s->t, s->h});
  }
  return k;
}

std::shared_ptr<fe::graph::Tensor_attributes> tensor(fe::graph::Graph& g, const char* name,
                                                     Uid uid, int64_t b, int64_t heads,
                                                     int64_t t, int64_t d,
                                                     const kernels::AttnStrides& s) {
  return g.tensor(fe::graph::Tensor_attributes()
                      .set_name(name)
                      .set_uid(uid)
                      .set_dim({b, heads, t, d})
                      .set_stride({s.b, s.h, s.t, 1}));
}

void output(const std::shared_ptr<fe::graph::Tensor_attributes>& x, Uid uid, int64_t b,
            int64_t heads, int64_t t, int64_t d, const kernels::AttnStrides& s) {
  x->set_output(true).set_uid(uid).set_dim({b, heads, t, d}).set_stride({s.b, s.h, s.t, 1});
}

std::string status(fe::error_t e, const char* what) {
  return e.is_good() ? "" : std::string(what) + ": " + e.get_message();
}

template <class T>
Graph build(const kernels::AttentionParams<T>& p, bool backward, cudnnHandle_t handle) {
  const int64_t b = p.batch, t = p.seq, h = p.heads, hkv = p.kv_heads, d = p.head_dim;
  auto g = std::make_shared<fe::graph::Graph>();
  g->set_io_data_type(std::is_same_v<T, __half> ? fe::DataType_t::HALF : fe::DataType_t::BFLOAT16)
      .set_intermediate_data_type(fe::DataType_t::FLOAT)
      .set_compute_data_type(fe::DataType_t::FLOAT);
  auto q = tensor(*g, "Q", kQ, b, h, t, d, p.q_s);
  auto k = tensor(*g, "K", kK, b, hkv, t, d, p.k_s);
  auto v = tensor(*g, "V", kV, b, hkv, t, d, p.v_s);
  const kernels::AttnStrides lse_s{h * t, 1, t};  // [B, H, T] contiguous, as (b, t, h)
  if (!backward) {
    auto attrs = fe::graph::SDPA_attributes()
                     .set_name("attention")
                     .set_generate_stats(true)
                     .set_attn_scale(p.scale)
                     .set_causal_mask(p.causal);
    auto [o, stats] = g->sdpa(q, k, v, attrs);
    output(o, kO, b, h, t, d, p.out_s);
    output(stats, kStats, b, h, t, 1, lse_s);
    stats->set_data_type(fe::DataType_t::FLOAT);
  } else {
    auto o = tensor(*g, "O", kO, b, h, t, d, p.out_s);
    auto dout = tensor(*g, "dO", kDO, b, h, t, d, p.dout_s);
    auto stats = tensor(*g, "Stats", kStats, b, h, t, 1, lse_s);
    stats->set_data_type(fe::DataType_t::FLOAT);
    auto attrs = fe::graph::SDPA_backward_attributes()
                     .set_name("attention_backward")
                     .set_attn_scale(p.scale)
                     .set_causal_mask(p.causal)
                     .set_deterministic_algorithm(p.deterministic);
    auto [dq, dk, dv] = g->sdpa_backward(q, k, v, o, dout, stats, attrs);
    output(dq, kDQ, b, h, t, d, p.dq_s);
    output(dk, kDK, b, hkv, t, d, p.dk_s);
    output(dv, kDV, b, hkv, t, d, p.dv_s);
  }
  Graph out;
  std::string why = status(g->validate(), "validate");
  if (why.empty()) why = status(g->build_operation_graph(handle), "build_operation_graph");
  if (why.empty()) {
    why = status(g->create_execution_plans({fe::HeurMode_t::A}), "create_execution_plans");
  }
  if (why.empty()) why = status(g->check_support(handle), "check_support");
  if (why.empty()) why = status(g->build_plans(handle), "build_plans");
  if (why.empty()) why = status(g->get_workspace_size(out.workspace), "get_workspace_size");
  if (!why.empty()) {
    out.error = "cuDNN declined the attention graph (" + why + ")";
    return out;
  }
  out.graph = std::move(g);
  return out;
}

struct Cache {
  std::mutex mutex;
  std::map<int, cudnnHandle_t> handles;  // per device
  std::string handle_error;
  std::map<Key, Graph> graphs;  // per device too: the key's first entry is the device
};

Cache& cache() {
  static Cache c;
  return c;
}

/// The device's cuDNN handle (created on first use), or null with `why` set.
cudnnHandle_t handle_of(int device, std::string& why) {
  Cache& c = cache();
  if (auto it = c.handles.find(device); it != c.handles.end()) return it->second;
  why = load_cudnn();
  if (!why.empty()) return nullptr;
  cudnnHandle_t h = nullptr;
  try {
    if (fe::detail::create_handle(&h) != CUDNN_STATUS_SUCCESS) h = nullptr;
  } catch (const std::exception& e) {  // the shim throws when libcudnn cannot be opened
    why = std::string("libcudnn could not be loaded: ") + e.what();
    return nullptr;
  }
  if (!h) {
    why = "cudnnCreate failed";
    return nullptr;
  }
  c.handles[device] = h;
  return h;
}

template <class T>
std::string run(const kernels::AttentionParams<T>& p, bool backward, int device,
                cudaStream_t stream, const Workspace& workspace) {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  std::string why;
  cudnnHandle_t handle = handle_of(device, why);
  if (!handle) return why;
  Key key = key_of(p, backward);
  key.insert(key.begin(), device);
  auto it = c.graphs.find(key);
  if (it == c.graphs.end()) {
    try {
      it = c.graphs.emplace(key, build(p, backward, handle)).first;
    } catch (const std::exception& e) {
      it = c.graphs.emplace(key, Graph{nullptr, 0, std::string("cuDNN: ") + e.what()}).first;
    }
  }
  const Graph& g = it->second;
  if (!g.graph) return g.error;
  if (fe::detail::set_stream(handle, stream) != CUDNN_STATUS_SUCCESS) return "cudnnSetStream failed";
  std::unordered_map<int64_t, void*> ptrs{{kQ, const_cast<T*>(p.q)},
                                          {kK, const_cast<T*>(p.k)},
                                          {kV, const_cast<T*>(p.v)},
                                          {kO, p.out},
                                          {kStats, p.lse}};
  if (backward) {
    ptrs.insert({{kDO, const_cast<T*>(p.dout)}, {kDQ, p.dq}, {kDK, p.dk}, {kDV, p.dv}});
  }
  void* ws = g.workspace > 0 ? workspace(size_t(g.workspace)) : nullptr;
  return status(g.graph->execute(handle, ptrs, ws), "cuDNN attention execute");
}

}  // namespace

bool cudnn_attention_built() { return true; }

template <class T>
std::string cudnn_attention_forward(const kernels::AttentionParams<T>& p, int device,
                                    cudaStream_t stream, const Workspace& workspace) {
  return run(p, false, device, stream, workspace);
}

template <class T>
std::string cudnn_attention_backward(const kernels::AttentionParams<T>& p, int device,
                                     cudaStream_t stream, const Workspace& workspace) {
  return run(p, true, device, stream, workspace);
}

template std::string cudnn_attention_forward(const kernels::AttentionParams<__nv_bfloat16>&, int,
                                             cudaStream_t, const Workspace&);
template std::string cudnn_attention_forward(const kernels::AttentionParams<__half>&, int,
                                             cudaStream_t, const Workspace&);
template std::string cudnn_attention_backward(const kernels::AttentionParams<__nv_bfloat16>&, int,
                                              cudaStream_t, const Workspace&);
template std::string cudnn_attention_backward(const kernels::AttentionParams<__half>&, int,
                                              cudaStream_t, const Workspace&);

}  // namespace nuri::cuda
