// nuri._C: the pybind11 bindings. Thin on purpose: convert arguments, release the GIL around C++
// work, call the core. Tensors cross as NumPy arrays or DLPack capsules, without copies on the
// CPU; nuri::Error arrives in Python as nuri.Error (a RuntimeError) with the C++ message.
#include <dlpack/dlpack.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <type_traits>
#include <optional>
#include <string>
#include <vector>

#include "nuri/backend/backend.h"
#include "nuri/backend/build_info.h"
#include "nuri/data/token_file.h"
#include "nuri/model/transformer.h"
#include "nuri/data/corpus.h"
#include "nuri/dist/communicator.h"
#include "nuri/train/trainer.h"
#include "bindings.h"

namespace py = pybind11;
using namespace nuri;

namespace {

// ---- tensors: NumPy and DLPack ---------------------------------------------------------------

py::dtype numpy_dtype(DType t) {
  switch (t) {
    case DType::f32: return py::dtype::of<float>();
    case DType::f16: return py::dtype("float16");
    case DType::i32: return py::dtype::of<int32_t>();
    case DType::i64: return py::dtype::of<int64_t>();
    case DType::u16: case DType::bf16: return py::dtype::of<uint16_t>();  // bf16: raw bits
    case DType::u32: return py::dtype::of<uint32_t>();
  }
  throw py::value_error("unknown dtype");
}

DType dtype_of_numpy(const py::dtype& d) {
  if (!d.attr("isnative").cast<bool>()) {
    throw py::type_error("NumPy's " + std::string(py::str(static_cast<const py::handle&>(d))) +
                         " is in the other byte order than this machine's; convert it first "
                         "(arr.astype(arr.dtype.newbyteorder('=')))");
  }
  const char kind = d.kind();
  const auto size = d.itemsize();
  if (kind == 'f' && size == 4) return DType::f32;
  if (kind == 'f' && size == 2) return DType::f16;
  if (kind == 'i' && size == 4) return DType::i32;
  if (kind == 'i' && size == 8) return DType::i64;
  if (kind == 'u' && size == 2) return DType::u16;
  if (kind == 'u' && size == 4) return DType::u32;
  throw py::type_error("nuri has no dtype for NumPy's " + std::string(py::str(static_cast<const py::handle&>(d))) +
                       "; use float32, float16, int32, int64, uint16 or uint32");
}

// A NumPy view of t (CPU), keeping t's storage alive through the array's base object.
py::array to_numpy(const Tensor& t) {
  if (!t.device().is_cpu()) throw py::value_error("numpy() needs a CPU tensor, got " + t.device().str());
  std::vector<py::ssize_t> strides;
  for (int64_t s : t.strides()) strides.push_back(py::ssize_t(s * int64_t(dtype_size(t.dtype()))));
  auto* keep = new Tensor(t);
  py::capsule base(keep, [](void* p) { delete static_cast<Tensor*>(p); });
  return py::array(numpy_dtype(t.dtype()), std::vector<py::ssize_t>(t.shape().begin(), t.shape().end()),
                   strides, t.raw(), base);
}

// Holds a Python object for the lifetime of C++ storage; takes the GIL to let it go.
std::shared_ptr<void> hold(py::object obj) {
  return std::shared_ptr<void>(new py::object(std::move(obj)), [](void* p) {
    py::gil_scoped_acquire gil;
    delete static_cast<py::object*>(p);
  });
}

}  // namespace

Tensor tensor_from_numpy(py::array arr) {
  const DType dt = dtype_of_numpy(arr.dtype());
  Shape shape, strides;
  for (py::ssize_t i = 0; i < arr.ndim(); ++i) {
    shape.push_back(arr.shape(i));
    if (arr.strides(i) % arr.itemsize() != 0) throw py::value_error("array strides are not whole elements");
    strides.push_back(arr.strides(i) / arr.itemsize());
  }
  return Tensor::from_blob(arr.mutable_data(), shape, dt, Device::cpu(), hold(arr), strides);
}

namespace {

struct DLPackOwner {
  Tensor tensor;
  std::vector<int64_t> shape, strides;
  DLManagedTensor managed{};
};

py::capsule to_dlpack(const Tensor& t) {
  auto* owner = new DLPackOwner{t, t.shape(), t.strides(), {}};
  DLTensor& d = owner->managed.dl_tensor;
  d.data = t.raw();
  d.device = {t.device().is_cpu() ? kDLCPU : kDLCUDA, t.device().index};
  d.ndim = int(t.dim());
  switch (t.dtype()) {
    case DType::f32: d.dtype = {kDLFloat, 32, 1}; break;
    case DType::f16: d.dtype = {kDLFloat, 16, 1}; break;
    case DType::bf16: d.dtype = {kDLBfloat, 16, 1}; break;
    case DType::i32: d.dtype = {kDLInt, 32, 1}; break;
    case DType::i64: d.dtype = {kDLInt, 64, 1}; break;
    case DType::u16: d.dtype = {kDLUInt, 16, 1}; break;
    case DType::u32: d.dtype = {kDLUInt, 32, 1}; break;
  }
  d.shape = owner->shape.data();
  d.strides = owner->strides.data();
  d.byte_offset = 0;
  owner->managed.manager_ctx = owner;
  owner->managed.deleter = [](DLManagedTensor* m) { delete static_cast<DLPackOwner*>(m->manager_ctx); };
  // A capsule nobody consumed still owns the tensor; a consumer renames it "used_dltensor".
  return py::capsule(&owner->managed, "dltensor", [](PyObject* cap) {
    if (PyCapsule_IsValid(cap, "dltensor")) {
      auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap, "dltensor"));
      m->deleter(m);
    }
  });
}

DType dtype_of_dlpack(DLDataType t) {
  if (t.lanes != 1) throw py::type_error("DLPack tensors with vector lanes are not supported");
  if (t.code == kDLFloat && t.bits == 32) return DType::f32;
  if (t.code == kDLFloat && t.bits == 16) return DType::f16;
  if (t.code == kDLBfloat && t.bits == 16) return DType::bf16;
  if (t.code == kDLInt && t.bits == 32) return DType::i32;
  if (t.code == kDLInt && t.bits == 64) return DType::i64;
  if (t.code == kDLUInt && t.bits == 16) return DType::u16;
  if (t.code == kDLUInt && t.bits == 32) return DType::u32;
  throw py::type_error("nuri has no dtype for DLPack code " + std::to_string(t.code) + " with " +
                       std::to_string(t.bits) + " bits");
}

// Imports any DLPack producer (an object with __dlpack__, or a "dltensor" capsule) without copying.
Tensor from_dlpack(py::object obj) {
  py::object cap = py::hasattr(obj, "__dlpack__") ? obj.attr("__dlpack__")() : obj;
  if (!PyCapsule_IsValid(cap.ptr(), "dltensor")) {
    throw py::type_error("from_dlpack needs an object with __dlpack__ or an unused DLPack capsule");
  }
  auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap.ptr(), "dltensor"));
  PyCapsule_SetName(cap.ptr(), "used_dltensor");
  std::shared_ptr<void> keep(m, [](void* p) {
    py::gil_scoped_acquire gil;  // the producer's deleter may touch Python objects
    auto* mt = static_cast<DLManagedTensor*>(p);
    if (mt->deleter) mt->deleter(mt);
  });
  const DLTensor& d = m->dl_tensor;
  if (d.device.device_type != kDLCPU) {
    throw py::value_error("from_dlpack: only CPU tensors can be imported in this build (device type " +
                          std::to_string(d.device.device_type) + ")");
  }
  Shape shape(d.shape, d.shape + d.ndim);
  Shape strides = d.strides ? Shape(d.strides, d.strides + d.ndim) : Shape{};
  const DType dt = dtype_of_dlpack(d.dtype);
  return Tensor::from_blob(static_cast<char*>(d.data) + d.byte_offset, shape, dt, Device::cpu(),
                           std::move(keep), strides);
}

// ---- token batches ---------------------------------------------------------------------------

// An integer array [B, T] as an i32 host tensor (a copy); floats and out-of-int32 values refused.
Tensor token_batch(py::handle obj, const char* what) {
  py::array arr = py::array::ensure(obj);
  if (!arr) throw py::type_error(std::string(what) + " must be an integer array [B, T]");
  if (arr.dtype().kind() != 'i' && arr.dtype().kind() != 'u') {
    throw py::type_error(std::string(what) + " must hold integers, got " + std::string(py::str(static_cast<py::handle>(arr.dtype()))));
  }
  if (arr.ndim() != 2) {
    throw py::value_error(std::string(what) + " must be 2-D [B, T], got " + std::to_string(arr.ndim()) + " dims");
  }
  if (arr.dtype().kind() == 'u' && arr.dtype().itemsize() == 8) {
    // uint64 above INT64_MAX would turn negative in the cast to int64 (2^64 - 100: -100, the
    // ignore index), so it is checked as it is
    auto u = py::array_t<uint64_t, py::array::c_style | py::array::forcecast>::ensure(arr);
    for (int64_t i = 0; i < int64_t(u.size()); ++i) {
      if (u.data()[i] > uint64_t(INT32_MAX)) {
        throw py::value_error(std::string(what) + ": value " + std::to_string(u.data()[i]) +
                              " at flat index " + std::to_string(i) + " does not fit int32");
      }
    }
  }
  auto a = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(arr);
  Tensor t = Tensor::empty({a.shape(0), a.shape(1)}, DType::i32);
  const int64_t* src = a.data();
  for (int64_t i = 0; i < t.numel(); ++i) {
    if (src[i] < INT32_MIN || src[i] > INT32_MAX) {
      throw py::value_error(std::string(what) + ": value " + std::to_string(src[i]) + " at flat index " +
                            std::to_string(i) + " does not fit int32");
    }
    t.data<int32_t>()[i] = int32_t(src[i]);
  }
  return t;
}

// A 1-D sequence or array of token ids (0 .. 2^32 - 1) as a vector.
std::vector<uint32_t> token_vector(py::handle obj) {
  py::array arr = py::array::ensure(obj);
  if (arr && arr.size() == 0) throw py::value_error("tokens: none given (an empty array)");
  if (!arr || (arr.dtype().kind() != 'i' && arr.dtype().kind() != 'u')) {
    throw py::type_error("tokens must be a sequence or array of integers");
  }
  if (arr.ndim() != 1) {
    std::string shape;
    for (py::ssize_t i = 0; i < arr.ndim(); ++i) {
      if (i > 0) shape += ", ";
      shape += std::to_string(arr.shape(i));
    }
    throw py::value_error("tokens must be 1-D (one stream of ids), got shape (" + shape +
                          "); pass tokens.reshape(-1) to read a batch's rows one after another");
  }
  std::vector<uint32_t> out(size_t(arr.size()));
  auto take = [&](auto* data) {
    for (py::ssize_t i = 0; i < arr.size(); ++i) {
      const auto v = data[i];
      bool negative = false;
      if constexpr (std::is_signed_v<std::decay_t<decltype(v)>>) negative = v < 0;
      if (negative || uint64_t(v) > uint64_t(UINT32_MAX)) {
        throw py::value_error("token " + std::to_string(v) + " at index " + std::to_string(i) +
                              " is not a valid id (0 to 2^32 - 1)");
      }
      out[size_t(i)] = uint32_t(v);
    }
  };
  if (arr.dtype().kind() == 'u' && arr.itemsize() == 8) {  // above 2^63 is no int64
    take(py::array_t<uint64_t, py::array::c_style | py::array::forcecast>::ensure(arr).data());
  } else {
    take(py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(arr).data());
  }
  return out;
}

py::dict named_views(const std::vector<NamedTensor>& ts) {
  py::dict d;  // insertion-ordered: layout order
  for (const auto& t : ts) d[py::str(t.name)] = to_numpy(t.tensor);
  return d;
}

// Whether `t` holds every f32 weight of its config: not a ZeRO 3 shard, masters sharded by
// ZeRO 1 or 2 on a GPU, a tensor-parallel slice or a pipeline stage.
bool holds_whole_model(const Transformer& t) {
  return t.held_range() == std::make_pair(int64_t(0), t.parameter_count()) &&
         !t.masters_sharded() && t.tensor_parallel().size == 1 && t.stage().first == 0 &&
         t.stage().last == t.config().n_layer;
}

// A copy of `t` (in `be`'s memory) as f32 on the host: a GPU model's bf16 logits widened.
Tensor host_f32(Backend& be, const Tensor& t) {
  if (t.device().is_cpu() && t.dtype() == DType::f32) return t.clone();
  Tensor host = Tensor::empty(t.shape(), t.dtype());
  be.copy(t, host);
  be.synchronize();
  if (host.dtype() == DType::f32) return host;
  NURI_CHECK(host.dtype() == DType::bf16 || host.dtype() == DType::f16, "host_f32: a ",
             dtype_name(host.dtype()), " tensor");
  Tensor out = Tensor::empty(t.shape(), DType::f32);
  float* dst = out.data<float>();
  for (int64_t i = 0; i < host.numel(); ++i) {
    dst[i] = host.dtype() == DType::bf16 ? bf16_to_f32(host.data<bf16_t>()[i])
                                         : f16_to_f32(host.data<f16_t>()[i]);
  }
  return out;
}

// A model's tensors as NumPy arrays: views of a CPU model's, host copies of a GPU model's
// (what saving and exporting read; writing them changes nothing on the device).
py::dict model_arrays(const Transformer& m, const std::vector<NamedTensor>& ts) {
  if (m.backend().device().is_cpu()) return named_views(ts);
  std::vector<NamedTensor> host;
  {
    NuriCall nuri_call;
    for (const auto& t : ts) {
      Tensor h = Tensor::empty(t.tensor.shape(), t.tensor.dtype());
      m.backend().copy(t.tensor, h);
      host.push_back({t.name, h});
    }
    m.backend().synchronize();
  }
  return named_views(host);
}

// generate()'s stop: None, one token id, or a sequence of them (checked against the model's
// vocabulary by generate()).
std::vector<int32_t> stop_tokens(py::handle given) {
  std::vector<int32_t> ids;
  if (given.is_none()) return ids;
  // numpy's integers and 1-d arrays as Python ints and lists
  const py::object stop = !py::isinstance<py::int_>(given) && py::hasattr(given, "tolist")
                              ? given.attr("tolist")()
                              : py::reinterpret_borrow<py::object>(given);
  auto is_id = [](py::handle h) {  // an int or a numpy integer (__index__), not a bool
    return !py::isinstance<py::bool_>(h) && PyIndex_Check(h.ptr());
  };
  auto id = [&](py::handle h) {
    NURI_CHECK(is_id(h), "generate: stop takes token ids (an int, or a sequence of them), got ",
               std::string(py::str(py::type::of(h).attr("__name__"))));
    const auto v = py::reinterpret_steal<py::int_>(PyNumber_Index(h.ptr()));
    if (!v) {  // an __index__ that refuses (an array of more than one element)
      PyErr_Clear();
      NURI_CHECK(false, "generate: stop takes token ids (an int, or a sequence of them), got ",
                 std::string(py::str(py::type::of(h).attr("__name__"))));
    }
    int overflow = 0;
    const long long n = PyLong_AsLongLongAndOverflow(v.ptr(), &overflow);
    NURI_CHECK(!overflow && n >= INT32_MIN && n <= INT32_MAX, "generate: stop token ",
               py::repr(v).cast<std::string>(), " is not a token id of the model");
    return int32_t(n);
  };
  if (is_id(stop)) return {id(stop)};
  NURI_CHECK(py::isinstance<py::sequence>(stop) && !py::isinstance<py::str>(stop),
             "generate: stop takes token ids (an int, or a sequence of them), got ",
             std::string(py::str(py::type::of(stop).attr("__name__"))));
  for (py::handle h : stop) ids.push_back(id(h));
  return ids;
}

// Model.generate and Trainer.generate: sampling options from keyword arguments, GIL released.
SampleOptions sample_options(int64_t max_new, float temperature, int64_t top_k, uint64_t seed,
                             bool cache, float top_p, std::vector<int32_t> stop) {
  SampleOptions o;
  o.max_new_tokens = max_new;
  o.temperature = temperature;
  o.top_k = top_k;
  o.seed = seed;
  o.cache = cache;
  o.top_p = top_p;
  o.stop = std::move(stop);
  return o;
}
std::vector<int32_t> generate_tokens(Transformer& model, const std::vector<int32_t>& prompt,
                                     int64_t max_new, float temperature, int64_t top_k,
                                     uint64_t seed, bool cache, float top_p, py::handle stop) {
  SampleOptions opt = sample_options(max_new, temperature, top_k, seed, cache, top_p,
                                     stop_tokens(stop));
  NuriCall nuri_call;
  return generate(model, prompt, opt);
}

struct PyTrainer {
  std::shared_ptr<Transformer> model;
  std::unique_ptr<Trainer> trainer;
};

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "nuri's C++ core (see the nuri package for the documented API)";
  py::register_exception<Error>(m, "Error", PyExc_RuntimeError);

  m.def("build_info", [] {
    const BuildInfo b = build_info();
    py::dict d;
    d["version"] = b.version; d["blas"] = b.blas; d["cuda"] = b.cuda;
    d["cuda_architectures"] = b.cuda_architectures; d["mpi"] = b.mpi; d["sanitize"] = b.sanitize;
    d["backends"] = b.backends;
    py::list devices;
    for (const CudaDeviceInfo& c : cuda_devices()) {
      py::dict dev;
      dev["index"] = c.index; dev["name"] = c.name; dev["major"] = c.major; dev["minor"] = c.minor;
      dev["total_bytes"] = c.total_bytes; dev["sms"] = c.sms;
      devices.append(dev);
    }
    d["cuda_devices"] = devices;
    return d;
  }, "What this build contains: version, BLAS, CUDA architectures compiled, MPI, backends, and "
     "the CUDA devices it can use.");

  bind_config(m);
  bind_run(m);
  bind_checkpoint(m);
  bind_plan(m);

  py::class_<Tensor>(m, "Tensor", "A nuri tensor; NumPy and DLPack views share its memory.")
      .def_property_readonly("shape", [](const Tensor& t) { return py::tuple(py::cast(t.shape())); })
      .def_property_readonly("dtype", [](const Tensor& t) { return std::string(dtype_name(t.dtype())); })
      .def_property_readonly("device", [](const Tensor& t) { return t.device().str(); })
      .def("numel", &Tensor::numel)
      .def("numpy", &to_numpy, "A NumPy view of this tensor (no copy).")
      .def("__dlpack__", [](const Tensor& t, py::object stream) { return to_dlpack(t); }, py::arg("stream") = py::none())
      .def("__dlpack_device__", [](const Tensor& t) {
        return py::make_tuple(int(t.device().is_cpu() ? kDLCPU : kDLCUDA), t.device().index);
      })
      .def_static("from_dlpack", &from_dlpack, py::arg("obj"), "Wraps any DLPack producer's CPU tensor (no copy).")
      .def_static("from_numpy", &tensor_from_numpy, py::arg("array"), "Wraps a NumPy array (no copy).")
      .def("__repr__", &Tensor::str);

  py::class_<Transformer, std::shared_ptr<Transformer>>(m, "Model", "A transformer and its gradients on one backend.")
      .def(py::init([](const ModelConfigArg& config, const std::string& backend, uint64_t seed,
                       std::optional<std::pair<int64_t, int64_t>> shard,
                       std::optional<std::pair<int, int>> tensor_parallel,
                       std::optional<std::pair<int64_t, int64_t>> pipeline_stage,
                       const std::string& init) {
             NURI_CHECK(init == "random" || init == "zeros", "Model: init '", init,
                        "' is not one of random (drawn from the seed), zeros (for weights "
                        "loaded next)");
             WeightShard s;
             if (shard) s = {shard->first, shard->second};
             TensorParallelRank tp;
             if (tensor_parallel) tp = {tensor_parallel->first, tensor_parallel->second};
             PipelineStage stage;
             if (pipeline_stage) stage = {pipeline_stage->first, pipeline_stage->second};
             const ModelConfig cfg = model_config_arg(config);
             NuriCall nuri_call;  // drawing a large model's weights takes a while
             return std::make_shared<Transformer>(
                 cfg, make_backend(backend), seed, s, tp, stage,
                 init == "random" ? WeightInit::random : WeightInit::zeros);
           }),
           py::arg("config"), py::arg("backend") = "cpu", py::arg("seed") = 0,
           py::arg("shard") = py::none(), py::arg("tensor_parallel") = py::none(),
           py::arg("pipeline_stage") = py::none(), py::arg("init") = "random",
           "init: 'random' (the weights drawn from the seed) or 'zeros' (for weights set next, "
           "as nuri.load and nuri.import_hf do: drawing them would be most of a large model's "
           "construction time). "
           "shard=(lo, hi): hold that flat range of the weights alone, for ZeRO 3 "
           "(ProcessGroup.shard(n) is a rank's range); the whole model never exists here. "
           "tensor_parallel=(index, tp): this rank's slice of every layer as rank `index` of a "
           "tensor-parallel group of tp (ProcessGroup.tp_index(tp) is the index); train it with "
           "a Trainer whose parallel config has the same tp. pipeline_stage=(first, last): the "
           "blocks [first, last) of one pipeline stage (nuri.pipeline_stages gives the split; "
           "ProcessGroup.pp_index the stage), trained by a Trainer whose parallel config has "
           "the same pp.")
      .def_property_readonly("tensor_parallel", [](const Transformer& t) {
             return std::make_pair(t.tensor_parallel().rank, t.tensor_parallel().size);
           }, "(index, tp): this rank's place in its tensor-parallel group ((0, 1) without one).")
      .def_property_readonly("pipeline_stage", [](const Transformer& t) {
             return std::make_pair(t.stage().first, t.stage().last);
           }, "(first, last): the blocks this model holds ((0, n_layer): the whole model).")
      .def_property_readonly("held_range", &Transformer::held_range,
           "(lo, hi): the flat range of this model's weights it holds ((0, parameter_count) "
           "but for a ZeRO 3 shard).")
      .def_property_readonly("holds_whole_model", &holds_whole_model, "Whether this model holds every f32 weight of its config (not a ZeRO 3 shard, "
              "masters sharded by ZeRO 1 or 2 on a GPU, a tensor-parallel slice or a pipeline "
              "stage): only then can it be saved or exported as a model file.")
      .def_property_readonly("masters_sharded", &Transformer::masters_sharded,
           "Whether data parallelism (ZeRO 1 or 2 on a GPU) keeps only this rank's shard of the "
           "f32 master weights here (Trainer.master_weights() gathers them).")
      .def("__repr__", [](const Transformer& t) {
             std::string r = "Model(" + std::to_string(t.parameter_count()) + " parameters on " +
                              t.backend().name() + ": " + t.config().summary();
             if (t.held_range() != std::make_pair(int64_t(0), t.parameter_count())) {
               r += "; holds [" + std::to_string(t.held_range().first) + ", " +
                    std::to_string(t.held_range().second) + ")";
             }
             if (t.tensor_parallel().size > 1) {
               r += "; tensor-parallel " + std::to_string(t.tensor_parallel().rank) + " of " +
                    std::to_string(t.tensor_parallel().size);
             }
             if (t.stage().first != 0 || t.stage().last != t.config().n_layer) {
               r += "; blocks [" + std::to_string(t.stage().first) + ", " +
                    std::to_string(t.stage().last) + ")";
             }
             return r + ")";
           })
      .def_property_readonly("parameter_count", &Transformer::parameter_count)
      .def_property_readonly("config", [](const Transformer& t) { return t.config(); })
      .def("parameters", [](const Transformer& t) { return model_arrays(t, t.parameters()); },
           "Ordered dict: Hugging Face name -> float32 NumPy array: a writable view of a CPU "
           "model's weights (no copy), a host copy of a GPU model's.")
      .def("gradients", [](const Transformer& t) { return model_arrays(t, t.gradients()); })
      .def("copy_weights_from", [](Transformer& t, const Transformer& src) {
             NURI_CHECK(model_config_to_json(t.config()) == model_config_to_json(src.config()),
                        "copy_weights_from: the models' configs differ (", src.config().summary(),
                        " into ", t.config().summary(), ")");
             NURI_CHECK(holds_whole_model(t) && holds_whole_model(src),
                        "copy_weights_from: both models must hold all of their weights");
             NURI_CHECK(src.backend().device().is_cpu(), "copy_weights_from: the source is on ",
                        src.backend().name(), "; copy from a CPU model");
             NuriCall nuri_call;
             t.load_weights(src.param_buffer());
             t.backend().synchronize();
           }, py::arg("source"),
           "Sets every weight (and the compute copy) from a CPU model of the same config: how a "
           "model read on the CPU goes to a GPU.")
      .def_property("document_separator", &Transformer::document_separator,
                    [](Transformer& t, int64_t separator) {
                      NuriCall nuri_call;
                      t.set_document_separator(separator, t.document_separator_starts());
                    },
                    "Packed documents: the token id that splits documents, so that attention "
                    "stays inside them and a learned position table is read from each one's "
                    "start; -1: off, the default. It ends its document unless "
                    "document_separator_starts. train.document_mask sets both for a run.")
      .def_property("document_separator_starts", &Transformer::document_separator_starts,
                    [](Transformer& t, bool starts) {
                      NuriCall nuri_call;
                      t.set_document_separator(t.document_separator(), starts);
                    },
                    "Whether the separator begins its document (<|endoftext|> ids, llm.c's "
                    "GPT-2 shards) rather than ending it (ids <|endoftext|>, the default).")
      .def("sync_compute_weights", &Transformer::sync_compute_weights, py::call_guard<NuriCall>(),
           "Re-derives the bf16 compute copy from the parameters after writing them (no-op in f32).")
      .def("parameter", [](const Transformer& t, const std::string& name) {
             const py::dict one = model_arrays(t, {NamedTensor{name, t.parameter(name)}});
             return py::object(one[py::str(name)]);
           })
      .def("forward", [](Transformer& t, py::handle tokens, py::handle targets) {
             Tensor x = token_batch(tokens, "tokens"), y = token_batch(targets, "targets");
             NuriCall nuri_call;
             return t.forward(x, y);
           }, py::arg("tokens"), py::arg("targets"), "Mean cross-entropy; keeps activations for backward().")
      .def("logits", [](Transformer& t, py::handle tokens) {
             Tensor x = token_batch(tokens, "tokens");
             Tensor out;
             {
               NuriCall nuri_call;
               out = host_f32(t.backend(), t.logits(x));
             }
             // The model computes padded_vocab columns (a tensor-parallel rank its slice of
             // them); the padding's columns are not tokens, so they are cut off.
             const int64_t width = out.shape().back();
             const int64_t first = int64_t(t.tensor_parallel().rank) * width;
             const int64_t keep = std::clamp(t.config().vocab_size - first, int64_t(0), width);
             py::object all = to_numpy(out);
             if (keep == width) return all;
             return py::module_::import("numpy").attr("ascontiguousarray")(
                 all[py::make_tuple(py::ellipsis(), py::slice(0, keep, 1))]);
           }, py::arg("tokens"),
           "Logits [B, T, vocab_size] (float32) for token ids [B, T]; a tensor-parallel model's "
           "are its columns of them (rank r of tp: from column r * padded_vocab / tp).")
      .def("backward", [](Transformer& t, float loss_scale) {
             NURI_CHECK(std::isfinite(loss_scale), "backward: loss_scale is ", loss_scale,
                        "; give a finite number (1: the mean loss's gradients)");
             t.backward(loss_scale);
           }, py::arg("loss_scale") = 1.0f, py::call_guard<NuriCall>())
      .def("generate", &generate_tokens,
           py::arg("prompt"), py::arg("max_new_tokens") = 200, py::arg("temperature") = 1.0f, py::arg("top_k") = 0,
           py::arg("seed") = 0, py::arg("cache") = true, py::arg("top_p") = 1.0f,
           py::arg("stop") = py::none(),
           "Token ids continuing prompt: greedy at temperature 0, else top-k (and top-p) "
           "sampling, up to max_new_tokens or a stop token (an id or a sequence of them; the "
           "last returned). cache: each new token runs the products and its attention on its "
           "own row alone, from the earlier rows' cached keys and values "
           "(False: a whole forward of the window per token).")
      .def("zero_grad", &Transformer::zero_grad, py::call_guard<NuriCall>())
      .def("init_weights", &Transformer::init_weights, py::arg("seed"),
           py::call_guard<NuriCall>())
      .def("memory", [](const Transformer& t) {
        const AllocatorStats s = t.memory();
        py::dict d;
        d["current_bytes"] = s.current_bytes; d["peak_bytes"] = s.peak_bytes; d["num_allocs"] = s.num_allocs;
        d["reserved_bytes"] = s.reserved_bytes;
        return d;
      });

  py::class_<TokenFile, std::shared_ptr<TokenFile>>(m, "TokenFile", "Tokens from a file (memory-mapped) or an array.")
      .def_static("open", &TokenFile::open, py::arg("path"), py::arg("vocab_size") = 0,
                  py::call_guard<NuriCall>())
      .def_static("from_array", [](py::handle tokens, const std::string& name, int64_t vocab) {
        NURI_CHECK(vocab >= 0, "TokenFile.from_array: vocab_size ", vocab,
                   " (give the model's vocabulary size to check the ids against, or 0: unchecked)");
        return TokenFile::from_tokens(token_vector(tokens), name, vocab);
      }, py::arg("tokens"), py::arg("name") = "<array>", py::arg("vocab_size") = 0)
      .def("__len__", &TokenFile::size)
      .def("__repr__", [](const TokenFile& f) {
        return "TokenFile(" + std::to_string(f.size()) + " tokens from " + f.path() + ")";
      })
      .def_property_readonly("path", &TokenFile::path)
      .def("max_token", &TokenFile::max_token)
      .def_property_readonly("has_mask", &TokenFile::has_mask,
                             "Whether a loss mask goes with the tokens (fine-tuning data).")
      .def_property_readonly("packed_window", &TokenFile::packed_window,
                             "The seq_len its rows were packed for (tokenize pack=T): it trains "
                             "with that one or a multiple; 0: not packed.")
      .def_property("end_of_text", &TokenFile::end_of_text,
                    [](TokenFile& f, int64_t id) {
                      NURI_CHECK(id >= -1 && id <= int64_t(UINT32_MAX), "TokenFile.end_of_text: ",
                                 id, " is no token id (-1: unknown)");
                      f.set_end_of_text(id);
                    },
                    "The id that ends a document (tokenize.json's end-of-text), which "
                    "train.document_mask takes; -1: unknown.")
      .def("mask", [](const TokenFile& f) {
             py::array_t<uint8_t> out(f.size());
             for (int64_t i = 0; i < f.size(); ++i) out.mutable_data()[i] = f.trained(i) ? 1 : 0;
             return out;
           }, "The loss mask (1: trained on; all ones without a mask).")
      .def("to_numpy", [](const TokenFile& f) {
        py::array_t<uint32_t> out(f.size());
        for (int64_t i = 0; i < f.size(); ++i) out.mutable_data()[i] = f.at(i);
        return out;
      })
      .def("slice", [](std::shared_ptr<TokenFile> f, int64_t start, int64_t n) { return TokenFile::slice(f, start, n); },
           py::arg("start"), py::arg("n"));
  m.def("pipeline_stages", [](const ModelConfigArg& cfg, int pp, int64_t seq_len,
                              const std::vector<int64_t>& split) {
          return pipeline_stages(model_config_arg(cfg), pp, seq_len, split);
        },
        py::arg("config"), py::arg("pp"), py::arg("seq_len"),
        py::arg("split") = std::vector<int64_t>{},
        "The blocks of pp pipeline stages: stage s holds [first[s], first[s + 1]); balanced by "
        "compute (the head weighed on the last stage), or the block counts of split.");
  m.def("write_token_file", [](const std::string& path, py::handle tokens) { write_token_file(path, token_vector(tokens)); },
        py::arg("path"), py::arg("tokens"));
  m.def("text_file_to_tokens", &text_file_to_tokens, py::arg("text_path"), py::arg("token_path"),
        py::call_guard<NuriCall>());
  m.def("read_data", [](const std::string& path, int64_t vocab_size, const std::string& format) {
    return read_data(path, vocab_size, nullptr, format);
  }, py::arg("path"), py::arg("vocab_size") = 0, py::arg("format") = "auto",
     py::call_guard<NuriCall>(),
     "format auto: a token file (llm.c .bin, 1-D .npy) as it is, a .bin/.npy without either "
     "header refused, anything else as text in byte tokens; or text, llmc, npy, uint16, uint32 "
     "(headerless arrays).");
  m.def("split_validation", &split_validation, py::arg("data"),
        "(train, val): the last 10% held out (of packed data, the last tenth of its windows).");
  m.def("default_corpus", [] { return default_corpus(); },
        "The corpus nuri-train uses without --data (Debian's license texts) as byte tokens.");

  py::class_<ByteTokenizer>(m, "ByteTokenizer", "Bytes as tokens 0..255, end-of-text 256.")
      .def(py::init<>())
      .def_readonly_static("EOT", &ByteTokenizer::kEndOfText)
      .def_readonly_static("VOCAB_SIZE", &ByteTokenizer::kVocabSize)
      .def("encode", [](const ByteTokenizer& t, const std::string& s) {
        const auto v = t.encode(s);
        return std::vector<int64_t>(v.begin(), v.end());
      })
      .def("decode", [](const ByteTokenizer& t, const std::vector<int32_t>& ids) {
             // A byte model can emit invalid UTF-8: such bytes become U+FFFD.
             return py::bytes(t.decode(ids)).attr("decode")("utf-8", "replace");
           }, "Text of the tokens (invalid UTF-8 replaced by U+FFFD; end-of-text as <|endoftext|>).");

  py::class_<PyTrainer>(m, "Trainer", "The training loop over a Model (see nuri.Trainer).")
      .def(py::init([](std::shared_ptr<Transformer> model, const TrainConfig& cfg, std::shared_ptr<TokenFile> train,
                       std::shared_ptr<TokenFile> val, const ProcessGroup* pg, const ParallelConfig* parallel) {
             NURI_CHECK(model != nullptr, "Trainer: model is None; pass a nuri.Model");
             NURI_CHECK(train != nullptr, "Trainer: train is None; pass a nuri.TokenFile "
                        "(nuri.read_data(path), or TokenFile.from_array(ids))");
             auto p = std::make_unique<PyTrainer>();
             p->model = model;
             NuriCall nuri_call;  // collective over the ranks (NCCL's bootstrap)
             const ParallelConfig par = parallel ? *parallel : ParallelConfig{};
             if (par.tp > 1 || par.pp > 1) {  // the ranks as a dp × tp × pp grid
               const GridGroups grid = make_grid_groups(pg ? pg->comm : nullptr, par.tp, par.pp);
               p->trainer = std::make_unique<Trainer>(*model, cfg, std::move(train),
                                                      std::move(val), grid, par);
             } else {
               p->trainer = std::make_unique<Trainer>(*model, cfg, std::move(train),
                                                      std::move(val), pg ? pg->comm : nullptr,
                                                      par);
             }
             return p;
           }),
           py::arg("model"), py::arg("config"), py::arg("train"), py::arg("val") = nullptr,
           py::arg("process_group") = nullptr, py::arg("parallel") = nullptr,
           "process_group: the job's ranks (nuri.init_process_group()); then micro_batch and "
           "grad_accum are per rank and every rank reads its slice of each global batch. "
           "parallel: ZeRO stage, tensor and sequence parallelism (tp > 1: the ranks are a dp x "
           "tp grid, the model built with tensor_parallel=(pg.tp_index(tp), tp)), pipeline "
           "parallelism (pp > 1: a dp x tp x pp grid, the model built with pipeline_stage= its "
           "stage's blocks), buckets, overlap.")
      .def("step", [](PyTrainer& p) {
        StepStats s;
        {
          NuriCall nuri_call;
          s = p.trainer->step();
        }
        py::dict d;
        d["step"] = s.step; d["loss"] = s.loss; d["lr"] = s.lr; d["grad_norm"] = s.grad_norm;
        d["skipped"] = s.skipped; d["untrained"] = s.untrained; d["step_seconds"] = s.step_seconds;
        d["tokens_per_second"] = s.tokens_per_second; d["peak_bytes"] = s.peak_bytes;
        d["checkpoint"] = s.checkpoint;
        return d;
      })
      .def("save_checkpoint", [](PyTrainer& p, const std::string& root, int keep_last) {
             return p.trainer->save_checkpoint(root, keep_last);
           },
           py::arg("root"), py::arg("keep_last") = 3, py::call_guard<NuriCall>(),
           "Saves a checkpoint under root (a step-… directory); returns its path.")
      .def("save_checkpoint_async", [](PyTrainer& p, const std::string& root, int keep_last) {
             return p.trainer->save_checkpoint_async(root, keep_last);
           },
           py::arg("root"), py::arg("keep_last") = 3, py::call_guard<NuriCall>(),
           "Starts a background save; step() or finish_checkpoint() commits it.")
      .def("finish_checkpoint", [](PyTrainer& p) { return p.trainer->finish_checkpoint(); },
           py::call_guard<NuriCall>(),
           "Commits a pending asynchronous save; returns its path, or '' when none was pending.")
      .def("load_checkpoint", [](PyTrainer& p, const std::string& path, bool check_data) {
             return p.trainer->load_checkpoint(path, check_data);
           },
           py::arg("path"), py::arg("check_data") = true, py::call_guard<NuriCall>(),
           "Restores a checkpoint (a directory, or the newest under a root); returns its path. "
           "A checkpoint saved training on other data is refused unless check_data is False.")
      .def("evaluate", [](PyTrainer& p) { return p.trainer->evaluate(); }, py::call_guard<NuriCall>())
      .def("generate", [](PyTrainer& p, const std::vector<int32_t>& prompt, int64_t max_new, float temperature,
                          int64_t top_k, uint64_t seed, bool cache, float top_p, py::handle stop) {
             SampleOptions opt = sample_options(max_new, temperature, top_k, seed, cache, top_p,
                                                stop_tokens(stop));
             NuriCall nuri_call;  // through the pipeline's stages where there is one
             return p.trainer->generate(prompt, opt);
           },
           py::arg("prompt"), py::arg("max_new_tokens") = 200, py::arg("temperature") = 1.0f, py::arg("top_k") = 0,
           py::arg("seed") = 0, py::arg("cache") = true, py::arg("top_p") = 1.0f,
           py::arg("stop") = py::none(),
           "Token ids continuing prompt (as Model.generate); under ZeRO 3, tensor or pipeline "
           "parallelism a collective: every rank calls it with the same arguments.")
      .def("master_weights", [](PyTrainer& p) {
             Tensor t;
             {
               NuriCall nuri_call;
               t = p.trainer->master_weights();
             }
             return to_numpy(t);
           }, "Every f32 master weight (flat layout) on the host; collective over the ranks.")
      .def_property_readonly("world_size", [](const PyTrainer& p) {
        return p.trainer->data_parallel() ? p.trainer->data_parallel()->world() : 1;
      })
      .def("__repr__", [](const PyTrainer& p) {
        const int dp = p.trainer->data_parallel() ? p.trainer->data_parallel()->world() : 1;
        return "Trainer(step " + std::to_string(p.trainer->steps_done()) + " of " +
               std::to_string(p.trainer->config().steps) + ", " +
               std::to_string(p.trainer->skipped_steps()) + " skipped, data-parallel over " +
               std::to_string(dp) + ")";
      })
      .def_property_readonly("config", [](const PyTrainer& p) { return p.trainer->config(); },
           "The training config in use (a copy): grad_accum as derived from global_batch for "
           "this job's data-parallel ranks.")
      .def_property_readonly("steps_done", [](const PyTrainer& p) { return p.trainer->steps_done(); })
      .def_property_readonly("skipped_steps", [](const PyTrainer& p) { return p.trainer->skipped_steps(); })
      .def_property_readonly("data_position", [](const PyTrainer& p) {
        const DataPosition d = p.trainer->data_position();
        return py::make_tuple(d.epoch, d.batch);
      });
}
