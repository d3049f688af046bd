// nuri._C's checkpoint reading and streaming safetensors writing: what Python's export from a
// sharded checkpoint (nuri.hf.export_hf_checkpoint, nuri.consolidate) is made of, one tensor in
// memory at a time.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "bindings.h"
#include "nuri/ckpt/checkpoint.h"
#include "nuri/ckpt/consolidate.h"
#include "nuri/ckpt/safetensors.h"

namespace py = pybind11;
using namespace nuri;

void bind_checkpoint(py::module_& m) {
  py::class_<CheckpointReader>(m, "CheckpointReader",
                               "A committed checkpoint: its tensors, read slice by slice.")
      .def(py::init<const std::string&>(), py::arg("path"),
           "A checkpoint directory, or a root whose newest committed checkpoint is taken.")
      .def_property_readonly("dir", &CheckpointReader::dir)
      .def_property_readonly("step", &CheckpointReader::step)
      .def_property_readonly("meta", &CheckpointReader::meta, "The training state (JSON text).")
      .def("names", &CheckpointReader::range_names)
      .def("shape", &CheckpointReader::range_shape, py::arg("name"))
      .def("read", [](const CheckpointReader& r, const std::string& name) {
             const Shape shape = r.range_shape(name);
             py::array_t<float> out(std::vector<py::ssize_t>(shape.begin(), shape.end()));
             const Tensor t = Tensor::from_blob(out.mutable_data(), {r.range_numel(name)},
                                                DType::f32, Device::cpu());
             {
               NuriCall nuri_call;
               r.read_range(name, 0, t.numel(), t);
             }
             return out;
           }, py::arg("name"), "The whole tensor (f32, its shape), checksums checked.");

  py::class_<SafetensorsFile>(m, "SafetensorsReader",
                              "A safetensors file: its header validated, tensors read on request.")
      .def(py::init<const std::string&>(), py::arg("path"))
      .def_property_readonly("path", &SafetensorsFile::path)
      .def("names", &SafetensorsFile::names, "Tensor names in file order.")
      .def("shape", [](const SafetensorsFile& f, const std::string& name) {
             const Shape& s = f.entry(name).shape;
             return std::vector<int64_t>(s.begin(), s.end());
           }, py::arg("name"))
      .def("dtype", [](const SafetensorsFile& f, const std::string& name) {
             return std::string(safetensors_dtype(f.entry(name).dtype));
           }, py::arg("name"), "safetensors' name of the stored dtype (F32, BF16, F16, I32, I64).")
      .def_property_readonly("metadata", &SafetensorsFile::metadata)
      .def("read", [](const SafetensorsFile& f, const std::string& name) {
             const SafetensorsEntry& e = f.entry(name);
             NURI_CHECK(e.dtype == DType::f32 || e.dtype == DType::bf16 || e.dtype == DType::f16,
                        f.path(), ": tensor '", name, "' is ", safetensors_dtype(e.dtype),
                        ", not a floating-point tensor");
             py::array_t<float> out(std::vector<py::ssize_t>(e.shape.begin(), e.shape.end()));
             int64_t n = 1;
             for (int64_t d : e.shape) n *= d;
             const Tensor t = Tensor::from_blob(out.mutable_data(), {n}, DType::f32, Device::cpu());
             {
               NuriCall nuri_call;
               f.read(name, t);
             }
             return out;
           }, py::arg("name"), "The whole tensor as float32 (F32 as is; BF16 and F16 widened exactly).");

  py::class_<SafetensorsStreamWriter>(m, "SafetensorsWriter",
                                      "A safetensors file written one tensor at a time.")
      .def(py::init([](const std::string& path,
                       const std::vector<std::pair<std::string, std::vector<int64_t>>>& tensors,
                       const std::map<std::string, std::string>& metadata, bool checksum) {
             std::vector<SafetensorsPlanned> planned;
             for (const auto& [name, shape] : tensors) planned.push_back({name, DType::f32, shape});
             return std::make_unique<SafetensorsStreamWriter>(path, std::move(planned), metadata,
                                                              checksum);
           }),
           py::arg("path"), py::arg("tensors"), py::arg("metadata") = std::map<std::string, std::string>{},
           py::arg("checksum") = false,
           "tensors: (name, shape) of every f32 tensor, in the order they will be written. "
           "checksum: also record the tensors' SHA-256 that nuri.load checks (the tensors in name "
           "order).")
      .def("write", [](SafetensorsStreamWriter& w, const std::string& name, py::array_t<float, py::array::c_style | py::array::forcecast> a) {
             // Only read: a read-only array (np.load's mmap_mode="r") is copied, as the
             // tensor view needs writable memory.
             if (!a.writeable()) a = a.attr("copy")().cast<py::array_t<float, py::array::c_style>>();
             const Tensor t = tensor_from_numpy(a);
             NuriCall nuri_call;  // the disk and the checksum
             w.write(name, t);
           }, py::arg("name"), py::arg("array"))
      .def("close", &SafetensorsStreamWriter::close, py::call_guard<NuriCall>(),
           "Returns the file's SHA-256.");

  m.def("consolidate_checkpoint", [](const std::string& ckpt, const std::string& out) {
    ConsolidateStats s;
    {
      NuriCall nuri_call;
      s = consolidate_checkpoint(ckpt, out);
    }
    py::dict d;
    d["tensors"] = s.tensors;
    d["bytes"] = s.bytes;
    d["peak_bytes"] = s.peak_bytes;
    return d;
  }, py::arg("ckpt"), py::arg("out"),
     "The checkpoint's parameters as one safetensors file, one tensor in memory at a time.");
  m.def("checkpoint_owns", &checkpoint_owns, py::arg("step_dir"), py::arg("path"),
        "Why an export of the checkpoint in step_dir may not write path ('' when it may): "
        "inside a step-* directory of its root, or the root's latest or ledger.jsonl.");
}
