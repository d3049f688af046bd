// What the binding units of nuri._C share (bindings.cpp, config_bindings.cpp).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <variant>

#include "nuri/core/tensor.h"
#include "nuri/model/config.h"

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
