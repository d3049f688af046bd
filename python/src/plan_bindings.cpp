// The planner's bindings (nuri/train/plan.h): profiles cross as JSON text, layouts and memory
// as dicts; nuri.plan (python/nuri/plan.py) is the documented API over them.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "bindings.h"
#include "nuri/backend/backend.h"
#include "nuri/dist/communicator.h"
#include "nuri/dist/launch.h"
#include "nuri/train/plan.h"

namespace py = pybind11;
using namespace nuri;

namespace {

Layout layout_from(const py::dict& d) {
  Layout l;
  auto get = [&](const char* k, auto& out) {
    if (d.contains(k)) out = d[k].cast<std::decay_t<decltype(out)>>();
  };
  get("dp", l.dp);
  get("tp", l.tp);
  get("pp", l.pp);
  get("zero", l.zero);
  get("recompute_every", l.recompute_every);
  get("sp", l.sp);
  get("micro_batch", l.micro_batch);
  get("grad_accum", l.grad_accum);
  get("bucket_bytes", l.bucket_bytes);
  get("keep_gathered", l.keep_gathered);
  get("overlap", l.overlap);
  if (d.contains("recompute")) {
    const std::string r = d["recompute"].cast<std::string>();
    if (r == "none")
      l.recompute = Recompute::none;
    else if (r == "selective")
      l.recompute = Recompute::selective;
    else if (r == "full")
      l.recompute = Recompute::full;
    else
      throw py::value_error("layout recompute '" + r + "': none, selective or full");
  }
  for (auto item : d) {
    const std::string k = item.first.cast<std::string>();
    static const char* known[] = {
        "dp", "tp",          "pp",         "zero",         "recompute", "recompute_every",
        "sp", "micro_batch", "grad_accum", "bucket_bytes", "keep_gathered",
        "overlap", "summary"};  // summary: plan's text
    bool ok = false;
    for (const char* n : known) ok = ok || k == n;
    if (!ok) throw py::value_error("unknown layout key '" + k + "'");
  }
  return l;
}

py::dict layout_dict(const Layout& l) {
  py::dict d;
  d["dp"] = l.dp;
  d["tp"] = l.tp;
  d["pp"] = l.pp;
  d["zero"] = l.zero;
  d["recompute"] = recompute_name(l.recompute);
  d["recompute_every"] = l.recompute_every;
  d["sp"] = l.sp;
  d["micro_batch"] = l.micro_batch;
  d["grad_accum"] = l.grad_accum;
  d["bucket_bytes"] = l.bucket_bytes;
  d["keep_gathered"] = l.keep_gathered;
  d["overlap"] = l.overlap;
  d["summary"] = l.str();
  return d;
}

py::dict memory_dict(const MemoryPlan& m) {
  py::dict d;
  d["parameters"] = m.parameters;
  d["gradients"] = m.gradients;
  d["optimizer"] = m.optimizer;
  d["activations"] = m.activations;
  d["communication"] = m.communication;
  d["workspace"] = m.workspace;
  d["construction"] = m.construction;
  d["step"] = m.step();
  d["peak"] = m.peak();
  return d;
}

py::dict time_dict(const StepTime& t) {
  py::dict d;
  d["compute"] = t.compute;
  d["elementwise"] = t.elementwise;
  d["tp_comm"] = t.tp_comm;
  d["pp_comm"] = t.pp_comm;
  d["bubble"] = t.bubble;
  d["dp_comm"] = t.dp_comm;
  d["total"] = t.total();
  return d;
}

DeviceProfile profile_of(const std::string& json) {
  return device_profile_from_json(json, "profile");
}

}  // namespace

void bind_plan(py::module_& m) {
  m.def("device_profile_names", &device_profile_names);
  m.def(
      "device_profile_json",
      [](const std::string& name) { return device_profile_to_json(device_profile(name)); },
      py::arg("name_or_path"));
  m.def(
      "check_device_profile_json",
      [](const std::string& json, const std::string& origin) {
        return device_profile_to_json(device_profile_from_json(json, origin));
      },
      py::arg("json"), py::arg("origin"));
  m.def(
      "calibrate",
      [](const std::string& backend, const std::string& base, double seconds,
         const ProcessGroup* pg) {
        NURI_CHECK(seconds > 0, "calibrate: seconds_per_probe is ", seconds,
                   "; give a positive time (0.5 by default)");
        // Each rank on its own device (cuda: its local rank's GPU), the collectives over the
        // device's communicator (NCCL for a GPU: the host one cannot move device memory).
        std::unique_ptr<Backend> be = make_backend(pg ? backend_for_rank(backend, pg->launch)
                                                      : backend);
        const DeviceProfile b = device_profile(base);
        NuriCall nuri_call;
        std::shared_ptr<Communicator> comm;
        if (pg && pg->comm && pg->size() > 1) comm = make_device_communicator(pg->comm, *be);
        return device_profile_to_json(calibrate_device(*be, comm.get(), b, seconds));
      },
      py::arg("backend"), py::arg("base"), py::arg("seconds_per_probe") = 0.5,
      py::arg("process_group") = nullptr);
  m.def(
      "estimate_memory",
      [](const ModelConfigArg& cfg, const py::dict& layout, int64_t seq_len, const std::string& dev,
         int stage) {
        return memory_dict(
            estimate_memory(model_config_arg(cfg), layout_from(layout), seq_len, profile_of(dev), stage));
      },
      py::arg("model"), py::arg("layout"), py::arg("seq_len"), py::arg("device_json"),
      py::arg("stage") = 0);
  m.def(
      "estimate_step_time",
      [](const ModelConfigArg& cfg, const py::dict& layout, int64_t seq_len, const std::string& dev,
         int nodes) {
        return time_dict(
            estimate_step_time(model_config_arg(cfg), layout_from(layout), seq_len, profile_of(dev), nodes));
      },
      py::arg("model"), py::arg("layout"), py::arg("seq_len"), py::arg("device_json"),
      py::arg("nodes") = 1);
  m.def("model_flops_per_token", [](const ModelConfigArg& cfg, int64_t seq_len) {
          return model_flops_per_token(model_config_arg(cfg), seq_len);
        }, py::arg("model"), py::arg("seq_len"));
  m.def(
      "hardware_flops_per_token",
      [](const ModelConfigArg& cfg, int64_t seq_len, const std::string& recompute, int64_t every) {
        py::dict d;
        d["recompute"] = recompute;
        d["recompute_every"] = every;
        const Layout l = layout_from(d);
        return hardware_flops_per_token(model_config_arg(cfg), seq_len, l.recompute, l.recompute_every);
      },
      py::arg("model"), py::arg("seq_len"), py::arg("recompute") = "none", py::arg("every") = 1);
  m.def(
      "plan_layouts",
      [](const ModelConfigArg& cfg, const std::string& dev, int nodes, int devices_per_node,
         int64_t seq_len, int64_t global_batch, double usable_fraction, int rows) {
        PlanRequest r;
        r.model = model_config_arg(cfg);
        r.device = profile_of(dev);
        r.nodes = nodes;
        r.devices_per_node = devices_per_node;
        r.seq_len = seq_len;
        r.global_batch = global_batch;
        r.usable_fraction = usable_fraction;
        std::vector<PlanEntry> entries;
        std::string text;
        {
          NuriCall nuri_call;
          entries = plan_layouts(r);
          text = plan_report(r, entries, rows);
        }
        py::list out;
        for (const PlanEntry& e : entries) {
          py::dict d;
          d["layout"] = layout_dict(e.layout);
          d["memory"] = memory_dict(e.memory);
          d["worst_stage"] = e.worst_stage;
          d["time"] = time_dict(e.time);
          d["tokens_per_second"] = e.tokens_per_second;
          d["mfu"] = e.mfu;
          d["hfu"] = e.hfu;
          d["fits"] = e.fits;
          d["why"] = e.why;
          out.append(d);
        }
        return py::make_tuple(out, text);
      },
      py::arg("model"), py::arg("device_json"), py::arg("nodes") = 1,
      py::arg("devices_per_node") = 0, py::arg("seq_len") = 1024, py::arg("global_batch") = 0,
      py::arg("usable_fraction") = 0.9, py::arg("rows") = 10);
}
