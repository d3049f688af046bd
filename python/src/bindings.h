// What the binding units of nuri._C share (bindings.cpp, config_bindings.cpp).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "nuri/core/tensor.h"

/// A NumPy array as a nuri tensor over the same memory (the array is kept alive by the tensor).
nuri::Tensor tensor_from_numpy(pybind11::array arr);

/// The config classes (ModelConfig, TrainConfig, ..., RunConfig), ConfigError, the settings
/// schema and the command line; needs m.Error registered first.
void bind_config(pybind11::module_& m);
/// ProcessGroup, init_process_group and run_training.
void bind_run(pybind11::module_& m);
/// CheckpointReader, SafetensorsWriter, consolidate_checkpoint.
void bind_checkpoint(pybind11::module_& m);
void bind_plan(pybind11::module_& m);
