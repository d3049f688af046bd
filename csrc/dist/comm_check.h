// Argument checks shared by the communicators (internal).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "nuri/core/tensor.h"
#include "nuri/dist/communicator.h"

namespace nuri::dist {

/// Defined, f32 or bf16, contiguous.
void check_tensor(const char* op, const char* what, const Tensor& t);
/// Both pass check_tensor, same dtype, and out.numel · in_per_out == in.numel · out_per_in.
void check_pair(const char* op, const Tensor& in, const Tensor& out, int64_t in_per_out,
                int64_t out_per_in);
/// peer is another rank of [0, size).
void check_peer(const char* op, int peer, int rank, int size);
/// all_gather_v's arguments: one count per rank, in has counts[rank], out their sum; returns
/// the offset of rank's chunk in out.
int64_t check_gather_v(const Tensor& in, const Tensor& out, const std::vector<int64_t>& counts,
                       int rank, int size);

/// reduce_scatter_v's arguments: one count per rank, in has their sum, out counts[rank]; returns
/// the offset of rank's chunk in in.
int64_t check_scatter_v(const Tensor& in, const Tensor& out, const std::vector<int64_t>& counts,
                        int rank, int size);

/// t *= s on the host (f32; bf16 through f32, rounded to nearest even): avg from a sum.
void scale(const Tensor& t, double s);
/// Whether set_wait_interrupt's flag is set and reads true: a wait for other ranks should end.
bool wait_interrupted();

/// What an operation is, for error messages: "all_reduce (f32, 1024 elements, sum, peer 3)".
std::string describe(const char* op, const Tensor& t, std::optional<ReduceOp> rop = std::nullopt,
                     int peer = -1);

}  // namespace nuri::dist
