// What the binding units of nuri._C share (bindings.cpp, config_bindings.cpp).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <mutex>
#include <string>
#include <variant>

#include "nuri/core/tensor.h"
#include "nuri/model/config.h"

/// The lock every call into nuri that lets go of the GIL holds (NuriCall): one in the module.
inline std::recursive_mutex& nuri_call_mutex() {
  static std::recursive_mutex m;
  return m;
}

/// What every call into nuri's C++ that lets go of the GIL holds instead of a bare
/// gil_scoped_release: the GIL released, then one process-wide lock. A Model, a Trainer, a
/// communicator or a writer is not for two threads at once (a model's activations, a
/// communicator's collectives, a writer's digest), and Python threads could do that (a
/// generate() beside a step(), a barrier beside a step); with the lock their calls take turns.
/// The GIL goes first, so a thread waiting for the lock never holds what a running call's
/// Python callbacks need; recursive, as those callbacks (run_training's hooks, on the running
/// thread) may call nuri again.
struct NuriCall {
  pybind11::gil_scoped_release release;
  std::unique_lock<std::recursive_mutex> lock{nuri_call_mutex()};
};

/// A NumPy array as a nuri tensor over the same memory (the array is kept alive by the tensor).
nuri::Tensor tensor_from_numpy(pybind11::array arr);

/// A model config argument: a ModelConfig, or a preset's name (nuri.Model("gpt2-tiny")).
using ModelConfigArg = std::variant<nuri::ModelConfig, std::string>;
/// The config of a ModelConfigArg; an unknown preset name is a ConfigError listing the presets.
nuri::ModelConfig model_config_arg(const ModelConfigArg& arg);

/// The config classes (ModelConfig, TrainConfig, ..., RunConfig), ConfigError, the settings
/// schema and the command line; needs m.Error registered first.
void bind_config(pybind11::module_& m);
/// ProcessGroup, init_process_group and run_training.
void bind_run(pybind11::module_& m);
/// CheckpointReader, SafetensorsWriter, consolidate_checkpoint.
void bind_checkpoint(pybind11::module_& m);
void bind_plan(pybind11::module_& m);
