// nuri._C's config classes, process groups and runs. The config classes' properties are made from
// the settings tables (nuri/core/settings.h) in a loop, never one by one: a setting added to a
// table appears here, with its checks, without a line changed. The stubs in nuri/_C.pyi are
// generated from the same tables (python -m nuri.stubs --write).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <csignal>
#include <functional>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

#include "bindings.h"
#include "nuri/dist/communicator.h"
#include "nuri/dist/grid.h"
#include "nuri/dist/launch.h"
#include "nuri/train/run.h"

namespace py = pybind11;
using namespace nuri;

namespace {

// Ctrl-C during a wait for the other ranks: Python's own handler only flags it for when the wait
// returns, at its timeout (minutes) where a rank never comes. While one of these lives, a handler
// of nuri's (where Python's is installed) ends the TCP rendezvous' and collectives' waits
// (set_wait_interrupt), and call() raises KeyboardInterrupt. `work` runs without the GIL.
// Guards on several threads at once share one installation: the first installs the handler
// (saving Python's), the last restores Python's, so a later one never saves nuri's as Python's.
class CtrlCEndsWaits {
 public:
  CtrlCEndsWaits() {
    const std::lock_guard<std::mutex> lock(mutex_);
    if (users_++ == 0) {
      pressed_.store(false);
      struct sigaction sa {};
      sa.sa_handler = [](int) { pressed_.store(true); };
      sigemptyset(&sa.sa_mask);
      sa.sa_flags = SA_RESTART;
      installed_ = sigaction(SIGINT, nullptr, &python_) == 0 && python_.sa_handler != SIG_DFL &&
                   python_.sa_handler != SIG_IGN && sigaction(SIGINT, &sa, nullptr) == 0;
    }
    if (installed_) set_wait_interrupt(&pressed_);  // this thread's waits
  }
  ~CtrlCEndsWaits() {
    set_wait_interrupt(nullptr);
    const std::lock_guard<std::mutex> lock(mutex_);
    if (--users_ == 0 && installed_) {
      sigaction(SIGINT, &python_, nullptr);
      installed_ = false;
    }
  }
  CtrlCEndsWaits(const CtrlCEndsWaits&) = delete;
  CtrlCEndsWaits& operator=(const CtrlCEndsWaits&) = delete;

  // The call's lock first, then the guard: a guard installed while its thread waits for the
  // lock (a run on another thread holding it) would hold Ctrl-C back from that run.
  template <class Work>
  static auto call(Work work) -> decltype(work()) {
    auto interrupted = [] {
      PyErr_SetNone(PyExc_KeyboardInterrupt);
      return py::error_already_set();
    };
    try {
      if constexpr (std::is_void_v<decltype(work())>) {
        {
          NuriCall nuri_call;
          CtrlCEndsWaits guard;
          work();
        }
        if (pressed_.load()) throw interrupted();
      } else {
        auto result = [&] {
          NuriCall nuri_call;
          CtrlCEndsWaits guard;
          return work();
        }();
        if (pressed_.load()) throw interrupted();
        return result;
      }
    } catch (const Error&) {
      if (pressed_.load()) throw interrupted();
      throw;
    }
  }

 private:
  static inline std::atomic<bool> pressed_{false};
  static inline std::mutex mutex_;  // guards the three below
  static inline int users_ = 0;
  static inline struct sigaction python_ {};
  static inline bool installed_ = false;
};

// The dp x tp x pp grid of a process group (ProcessGrid checks that it divides the ranks).
ProcessGrid grid_of(const ProcessGroup& p, int tp, int pp) {
  tp = std::max(tp, 1);
  pp = std::max(pp, 1);
  // (in 64 bits: tp · pp of two large ints wraps, to 0 for 65536 · 65536)
  const int64_t tp_pp = int64_t(tp) * pp;
  return ProcessGrid(p.size(), int(std::max<int64_t>(p.size() / tp_pp, 1)), tp, pp);
}


py::object to_py(const SettingValue& v) {
  if (const bool* b = std::get_if<bool>(&v)) return py::bool_(*b);
  if (const int64_t* i = std::get_if<int64_t>(&v)) return py::int_(*i);
  if (const double* d = std::get_if<double>(&v)) return py::float_(*d);
  return py::str(std::get<std::string>(v));
}

// A Python value as a setting's value, checked by the setting (the same messages as a config
// file's: "train.lr: expected a number > 0, got 'fast'").
SettingValue from_py(py::handle h, const Setting& s, const std::string& path) {
  SettingValue v;
  py::object item;  // a NumPy scalar (np.int64(5), np.float32(1e-3), np.bool_) as Python's
  if (!py::isinstance<py::bool_>(h) && !py::isinstance<py::int_>(h) &&
      !py::isinstance<py::float_>(h) && !py::isinstance<py::str>(h) &&
      py::hasattr(h, "item") && py::hasattr(h, "dtype")) {
    try {
      if (py::isinstance(h, py::module_::import("numpy").attr("generic"))) {
        item = h.attr("item")();
        h = item;
      }
    } catch (const py::error_already_set&) {  // no NumPy: not a NumPy scalar either
    }
  }
  if (py::isinstance<py::bool_>(h)) {
    v = h.cast<bool>();
  } else if (py::isinstance<py::int_>(h)) {
    try {
      v = h.cast<int64_t>();
    } catch (const py::cast_error&) {
      throw ConfigError(path + ": " + std::string(py::str(h)) + " is too large; expected " +
                        s.expected());
    }
  } else if (py::isinstance<py::float_>(h)) {
    v = h.cast<double>();
  } else if (py::isinstance<py::str>(h)) {
    v = h.cast<std::string>();
  } else {
    const std::string got = py::isinstance<py::dict>(h)   ? "a table"
                            : py::isinstance<py::list>(h) ? "a list"
                                                          : std::string(py::repr(h));
    throw ConfigError(path + ": expected " + s.expected() + ", got " + got);
  }
  return s.check(v, path);
}

/// `h` with NumPy scalars as Python's and every number finite, for json.dumps (which would
/// refuse NumPy's types and write NaN, which is not JSON); errors name the key. A run config is
/// a few levels deep: deeper than kMaxDepth (a dict that holds itself) is refused before the
/// recursion could overflow the stack.
constexpr int kMaxDepth = 64;
py::object json_ready(py::handle h, const std::string& path, int depth = 0) {
  const std::string at = path.empty() ? "the config" : path;
  if ((py::isinstance<py::dict>(h) || py::isinstance<py::list>(h) ||
       py::isinstance<py::tuple>(h)) && depth >= kMaxDepth) {
    throw ConfigError(at + ": nested more than " + std::to_string(kMaxDepth) + " levels deep "
                      "(a table or list that holds itself?); a run config is a few levels deep");
  }
  if (py::isinstance<py::dict>(h)) {
    py::dict out;
    for (auto [k, v] : py::reinterpret_borrow<py::dict>(h)) {
      const std::string key = py::str(k);
      out[k] = json_ready(v, path.empty() ? key : path + "." + key, depth + 1);
    }
    return std::move(out);
  }
  if (py::isinstance<py::list>(h) || py::isinstance<py::tuple>(h)) {
    py::list out;
    for (py::handle v : h) out.append(json_ready(v, path, depth + 1));
    return std::move(out);
  }
  if (!py::isinstance<py::bool_>(h) && !py::isinstance<py::int_>(h) &&
      !py::isinstance<py::float_>(h) && !py::isinstance<py::str>(h) && !h.is_none() &&
      py::hasattr(h, "item") && py::hasattr(h, "dtype")) {
    try {
      if (py::isinstance(h, py::module_::import("numpy").attr("generic"))) {
        return json_ready(h.attr("item")(), path);
      }
    } catch (const py::error_already_set&) {  // no NumPy: not a NumPy scalar either
    }
  }
  if (py::isinstance<py::float_>(h) && !std::isfinite(h.cast<double>())) {
    throw ConfigError(at + ": expected a finite number, got " + std::string(py::repr(h)));
  }
  if (!py::isinstance<py::bool_>(h) && !py::isinstance<py::int_>(h) &&
      !py::isinstance<py::float_>(h) && !py::isinstance<py::str>(h) && !h.is_none()) {
    throw ConfigError(at + ": expected a number, a string, a bool, a list or a table, got " +
                      std::string(py::repr(h)));
  }
  return py::reinterpret_borrow<py::object>(h);
}

py::dict settings_dict(const Settings& table, const void* obj) {
  py::dict d;
  for (const Setting& s : table.items()) d[py::str(s.key)] = to_py(s.get(obj));
  return d;
}

// Properties, keyword construction, to_dict, ==, repr and copy for a config struct T. to_dict:
// every setting of T as a dict (default: the table's settings).
template <class T>
void bind_settings(py::class_<T>& cls, const Settings& table, const std::string& section,
                   std::function<py::object(const T&)> to_dict = nullptr) {
  if (!to_dict) {
    to_dict = [tp = &table](const T& o) -> py::object { return settings_dict(*tp, &o); };
  }
  for (const Setting& s : table.items()) {
    const Setting* sp = &s;  // the tables are static: the pointer outlives the module
    const std::string path = section.empty() ? s.key : section + "." + s.key;
    cls.def_property(
        s.key.c_str(), [sp](const T& o) { return to_py(sp->get(&o)); },
        [sp, path](T& o, py::handle v) { sp->set(&o, from_py(v, *sp, path)); }, s.help.c_str());
  }
  const Settings* tp = &table;
  cls.def(py::init([tp, section](py::kwargs kw) {
            T obj;
            for (auto [k, v] : kw) {
              const std::string key = py::str(k);
              const Setting* s = tp->find(key);
              const std::string path = section.empty() ? key : section + "." + key;
              if (!s) throw ConfigError(path + ": unknown key");
              s->set(&obj, from_py(v, *s, path));
            }
            return obj;
          }),
          "Defaults, with any setting given by keyword (e.g. steps=10, lr=1e-3).")
      .def("to_dict", to_dict, "Every setting by key (floats as their shortest float32 decimal).")
      .def("__eq__", [to_dict](const T& a, const T& b) { return to_dict(a).equal(to_dict(b)); },
           py::is_operator())
      .def("__copy__", [](const T& o) { return T(o); })
      .def("copy", [](const T& o) { return T(o); })
      .def("__repr__", [cls, to_dict](const T& o) {
        return std::string(py::str(cls.attr("__name__"))) + "(" +
               std::string(py::repr(to_dict(o))) + ")";
      });
  cls.attr("__hash__") = py::none();
}

py::list schema_list() {
  const RunConfig defaults;
  py::list out;
  for (const auto& sec : run_schema()) {
    for (const Setting& s : sec.settings.items()) {
      py::dict d;
      d["section"] = sec.name;
      d["key"] = s.key;
      d["path"] = sec.name.empty() ? s.key : sec.name + "." + s.key;
      d["kind"] = setting_kind_name(s.kind);
      d["choices"] = s.choices;
      d["aliases"] = s.aliases;
      d["flag"] = s.flag;
      d["help"] = s.help;
      d["default"] = to_py(s.get(&defaults));
      d["expected"] = s.expected();
      out.append(d);
    }
  }
  return out;
}

py::dict result_dict(const RunResult& r) {
  py::dict d;
  d["status"] = r.status;
  d["steps_done"] = r.steps_done;
  d["skipped_steps"] = r.skipped_steps;
  d["final_loss"] = r.final_loss;
  d["val_loss"] = r.val_loss;
  d["seconds"] = r.seconds;
  d["peak_bytes"] = r.peak_bytes;
  d["stop_reason"] = r.stop_reason;
  d["checkpoint"] = r.checkpoint;
  return d;
}

}  // namespace

ModelConfig model_config_arg(const ModelConfigArg& arg) {
  if (const auto* c = std::get_if<ModelConfig>(&arg)) return *c;
  const std::string& preset = std::get<std::string>(arg);
  const std::vector<std::string> names = model_preset_names();
  if (std::find(names.begin(), names.end(), preset) == names.end()) {
    std::string list;
    for (const std::string& n : names) list += (list.empty() ? "" : ", ") + n;
    throw ConfigError("model: unknown preset '" + preset + "'; presets: " + list +
                      " (or give a ModelConfig)");
  }
  return model_preset(preset);
}

void bind_config(py::module_& m) {
  // ConfigError: a nuri.Error that is also a ValueError (a config is a bad value).
  py::object error = m.attr("Error");
  py::object config_error =
      py::module_::import("builtins")
          .attr("type")("ConfigError",
                        py::make_tuple(error, py::module_::import("builtins").attr("ValueError")),
                        py::dict(py::arg("__doc__") =
                                     "A configuration that cannot be used; the message names the "
                                     "key path.",
                                 py::arg("__module__") = "nuri"));
  m.attr("ConfigError") = config_error;
  static py::object config_error_type = config_error;
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const ConfigError& e) {
      PyErr_SetString(config_error_type.ptr(), e.what());
    }
  });

  py::class_<ModelConfig> model(m, "ModelConfig",
                                "Decoder-only transformer configuration; "
                                "ModelConfig() is GPT-2 124M.");
  // ModelConfig("llama-tiny", n_layer=4): a preset with keyword overrides (ahead of the
  // keywords-only constructor, so that preset= given by keyword comes here).
  model.def(py::init([](const std::string& preset, py::kwargs kw) {
              ModelConfig c = model_config_arg(preset);
              // n_kv_head last: n_head's setting makes it follow on a full-attention model,
              // which must not undo an n_kv_head given with it, in whatever order.
              std::vector<std::pair<std::string, py::handle>> keys;
              for (auto [k, v] : kw) keys.push_back({py::str(k), v});
              std::stable_partition(keys.begin(), keys.end(),
                                    [](const auto& kv) { return kv.first != "n_kv_head"; });
              for (const auto& [key, v] : keys) {
                const std::string path = "model." + key;
                const Setting* s = model_settings().find(key);
                if (!s) throw ConfigError(path + ": unknown key");
                s->set(&c, from_py(v, *s, path));
              }
              c.validate();
              return c;
            }),
            py::arg("preset"),
            "A preset (ModelConfig.preset_names()) with any setting given by keyword overriding "
            "it, validated.");
  bind_settings(model, model_settings(), "model");
  model.def("validate", &ModelConfig::validate, "Raises nuri.Error naming the first bad field.")
      .def("num_params", &ModelConfig::num_params)
      .def("padded_vocab", &ModelConfig::padded_vocab)
      .def("head_size", &ModelConfig::head_dim,
           "Width of an attention head: head_dim, or d_model / n_head when that is 0.")
      .def("summary", &ModelConfig::summary)
      .def("to_json", &model_config_to_json, py::arg("indent") = -1)
      .def_static("from_json", &model_config_from_json, py::arg("json"), py::arg("origin") = "",
                  "A validated ModelConfig from a JSON object of model keys.")
      .def_static("preset", &model_preset, py::arg("name"))
      .def_static("preset_names", &model_preset_names)
      .def_static("layout_names", [](const ModelConfig& c) {
        std::vector<std::string> names;
        for (const ParamSpec& p : param_layout(c)) names.push_back(p.name);
        return names;
      }, py::arg("config"), "The parameters' names in layout order.");

  py::class_<TrainConfig> train(m, "TrainConfig", "Training loop settings.");
  bind_settings(train, train_settings(), "train");
  train.def("validate", &TrainConfig::validate);
  m.def("learning_rate", &learning_rate, py::arg("config"), py::arg("step"));

  py::class_<ParallelConfig> parallel(
      m, "ParallelConfig",
      "Parallel settings: ZeRO stage, tensor and sequence parallelism, buckets, overlap.");
  bind_settings(parallel, parallel_settings(), "parallel");
  parallel.def("validate", &ParallelConfig::validate);
  py::class_<CheckpointConfig> ckpt(m, "CheckpointConfig", "Checkpoint and preemption policy.");
  bind_settings(ckpt, checkpoint_settings(), "checkpoint");
  py::class_<DataConfig> data(m, "DataConfig", "Training and validation data paths.");
  bind_settings(data, data_settings(), "data");
  py::class_<SampleConfig> sample(m, "SampleConfig", "The sample generated after training.");
  bind_settings(sample, sample_settings(), "sample");

  // RunConfig: the sections as attributes (changed in place: cfg.train.lr = 1e-3), the
  // top-level settings as properties from the schema's "" section.
  py::class_<RunConfig> run(m, "RunConfig", "Everything a training run needs (see nuri.config).");
  run.def_readwrite("model", &RunConfig::model)
      .def_readwrite("train", &RunConfig::train)
      .def_readwrite("parallel", &RunConfig::parallel)
      .def_readwrite("checkpoint", &RunConfig::checkpoint)
      .def_readwrite("data", &RunConfig::data)
      .def_readwrite("sample", &RunConfig::sample)
      .def_property(
          "preset", [](const RunConfig& c) { return c.preset; },
          [](RunConfig& c, const std::string& p) {
            settings_apply_overrides(run_schema(), &c, {"model.preset=\"" + p + "\""});
          },
          "The model preset the model section started from ('': none); setting "
          "it resets the model to that preset.");
  bind_settings<RunConfig>(run, run_schema().front().settings, "", [](const RunConfig& c) {
    return py::module_::import("json").attr("loads")(c.to_json(-1));  // the whole config
  });
  run.def("validate", &RunConfig::validate)
      .def("to_json", &RunConfig::to_json, py::arg("indent") = 2)
      .def_static("from_json", &RunConfig::from_json, py::arg("json"), py::arg("origin") = "")
      .def_static(
          "from_dict",
          [](py::handle d, const std::string& origin) {
            if (!py::isinstance<py::dict>(d)) {
              throw ConfigError((origin.empty() ? "" : origin + ": ") +
                                "expected a table (dict) at the top level");
            }
            py::object ready;
            try {
              ready = json_ready(d, "");
            } catch (const ConfigError& e) {  // named as from_json names its errors
              throw ConfigError((origin.empty() ? "" : origin + ": ") + e.what());
            }
            return RunConfig::from_json(
                py::str(py::module_::import("json").attr("dumps")(ready)).cast<std::string>(),
                origin);
          },
          py::arg("d"), py::arg("origin") = "")
      .def_static("load", &RunConfig::load, py::arg("path"),
                  "Reads a .toml or .json run config over the defaults.")
      .def("with_overrides", &RunConfig::with_overrides, py::arg("overrides"),
           "A copy with KEY=VALUE overrides applied (train.lr=1e-3, model=gpt2-tiny).");
  m.def("settings_schema", &schema_list,
        "Every setting of a run config: section, key, path, kind, choices, aliases, flag, help, "
        "default, expected.");
  m.def(
      "parse_run_args",
      [](const std::vector<std::string>& args) -> py::object {
        RunArgs a = parse_run_args(args);
        if (a.help) return py::none();
        return py::cast(a.config);
      },
      py::arg("args"), "The RunConfig of nuri-train's command line; None for --help.");
  m.def("run_usage", &run_usage, py::arg("program"));
}

void bind_run(py::module_& m) {
  py::class_<ProcessGroup>(m, "ProcessGroup",
                           "This process's place in its job and the communicator over its ranks.")
      .def_property_readonly("rank", &ProcessGroup::rank)
      .def_property_readonly("world_size", &ProcessGroup::size)
      .def_property_readonly("local_rank",
                             [](const ProcessGroup& p) { return p.launch.local_rank; })
      .def_property_readonly("local_world_size",
                             [](const ProcessGroup& p) { return p.launch.local_world_size; })
      .def_property_readonly("launcher",
                             [](const ProcessGroup& p) { return launcher_name(p.launch.launcher); })
      .def_property_readonly(
          "backend",
          [](const ProcessGroup& p) {
            return p.comm ? p.comm->backend_name() : std::string("single");
          },
          "The host communicator: single, mpi or tcp.")
      .def(
          "device",
          [](const ProcessGroup& p, const std::string& backend) {
            return backend_for_rank(backend, p.launch);
          },
          py::arg("backend"),
          "The backend name for this rank: 'cuda' becomes its local GPU, "
          "'cuda:N'; others as they are.")
      .def(
          "shard",
          [](const ProcessGroup& p, int64_t n, int tp, int pp) {
            const GridCoord c = grid_of(p, tp, pp).coord(p.rank());
            return DataParallel::shard_of(n, grid_of(p, tp, pp).dp(), c.dp);
          },
          py::arg("n"), py::arg("tp") = 1, py::arg("pp") = 1,
          "This rank's range (lo, hi) of n elements sharded over the data-parallel ranks (the "
          "ranks / (tp pp) of a dp x tp x pp grid), as ZeRO shards the flat parameters.")
      .def(
          "tp_index",
          [](const ProcessGroup& p, int tp, int pp) { return grid_of(p, tp, pp).coord(p.rank()).tp; },
          py::arg("tp"), py::arg("pp") = 1,
          "This rank's index in its tensor-parallel group of a dp x tp x pp grid (tp "
          "neighbouring ranks): the `index` of Model(tensor_parallel=(index, tp)).")
      .def(
          "pp_index",
          [](const ProcessGroup& p, int pp, int tp) { return grid_of(p, tp, pp).coord(p.rank()).pp; },
          py::arg("pp"), py::arg("tp") = 1,
          "This rank's pipeline stage in a dp x tp x pp grid (the slowest-varying coordinate): "
          "the stage s of Model(pipeline_stage=(first[s], first[s + 1])), first = "
          "nuri.pipeline_stages(config, pp, seq_len).")
      .def("barrier",
           [](const ProcessGroup& p) {
             CtrlCEndsWaits::call([&] {
               if (p.comm) p.comm->barrier();
             });
           })
      .def(
          "all_reduce",
          [](const ProcessGroup& p, py::array array, const std::string& op) {
            NURI_CHECK(op == "sum" || op == "avg", "all_reduce: op must be 'sum' or 'avg', not '",
                       op, "'");
            NURI_CHECK(array.dtype().is(py::dtype::of<float>()) &&
                           (array.flags() & py::array::c_style) && array.writeable(),
                       "all_reduce takes a writable C-contiguous float32 array");
            const Tensor t = tensor_from_numpy(array).view({int64_t(array.size())});
            if (p.comm && t.numel() > 0) {
              CtrlCEndsWaits::call(
                  [&] { p.comm->all_reduce(t, op == "sum" ? ReduceOp::sum : ReduceOp::avg); });
            }
          },
          py::arg("array"), py::arg("op") = "sum",
          "Sums (or averages) a float32 array over the ranks, in place.")
      .def("__repr__", [](const ProcessGroup& p) {
        return "ProcessGroup(rank=" + std::to_string(p.rank()) +
               ", world_size=" + std::to_string(p.size()) +
               ", launcher=" + launcher_name(p.launch.launcher) + ")";
      });
  m.def(
      "init_process_group",
      [](double timeout_s) {
        CommOptions o;
        o.timeout_s = timeout_s;
        return CtrlCEndsWaits::call([&] { return init_process_group(o); });
      },
      py::arg("timeout_s") = 600.0,
      "The launcher's process group from the environment (collective over the job's ranks).");

  m.def(
      "init_model",
      [](const RunConfig& cfg) {
        std::vector<std::string> notes;
        RunConfig out = init_model(cfg, &notes);
        return py::make_tuple(out, notes);
      },
      py::arg("config"),
      "(config, notes): the config with the model a run of it trains when checkpoint.init names "
      "a model file (the file's model, with the run's context settings of a RoPE model), and a "
      "line for each setting that is not the file's. ConfigError where they do not fit.");

  m.def(
      "run_training",
      [](const RunConfig& cfg, const ProcessGroup* pg, py::object write, bool terminal,
         py::object on_step, bool catch_interrupt) {
        RunHooks hooks;
        bool interrupted = false;
        // An exception from Python code of a hook is this rank's alone: thrown through the run,
        // it would leave the other ranks waiting. So it becomes the interrupt the run stops for
        // at the step's end (every rank together, checkpointed as for Ctrl-C, which raises
        // KeyboardInterrupt there most often), and any other exception is raised once the run
        // has stopped.
        std::shared_ptr<py::error_already_set> hook_error;
        auto calling = [&interrupted, &hook_error, catch_interrupt](
                           const std::function<void()>& call) {
          py::gil_scoped_acquire gil;
          try {
            call();
          } catch (py::error_already_set& e) {
            if (!catch_interrupt) throw;
            interrupted = true;
            if (!e.matches(PyExc_KeyboardInterrupt) && !hook_error) {
              hook_error = std::make_shared<py::error_already_set>(std::move(e));
            }
          }
        };
        if (!write.is_none()) {
          hooks.write = [write, calling](const std::string& text) {
            // A byte-level sample may not be valid UTF-8: such bytes become U+FFFD.
            calling([&] { write(py::bytes(text).attr("decode")("utf-8", "replace")); });
          };
          hooks.terminal = terminal;
        }
        if (!on_step.is_none()) {
          hooks.on_step = [on_step, calling](const std::string& record) {
            calling([&] { on_step(record); });
          };
        }
        if (catch_interrupt) {  // Ctrl-C: Python's handler flags it; the run stops at a step's end
          hooks.interrupted = [&interrupted] {
            py::gil_scoped_acquire gil;
            if (PyErr_CheckSignals() != 0) {
              PyErr_Clear();
              interrupted = true;
            }
            return interrupted;
          };
        }
        RunResult r;
        {
          NuriCall nuri_call;
          r = run_training(cfg, hooks, pg);
        }
        if (hook_error) throw *hook_error;
        return result_dict(r);
      },
      py::arg("config"), py::arg("process_group") = nullptr, py::arg("write") = py::none(),
      py::arg("terminal") = false, py::arg("on_step") = py::none(),
      py::arg("catch_interrupt") = true,
      "Runs a training run (nuri/train/run.h); returns status, steps_done, final_loss, ...");
}
