// Instantiation unit of the multi-tensor optimizer kernels: builds the descriptor array and the
// prefix table on the host, uploads them into the caller's workspace and launches.
//
// Workspace layout: [descriptors, T] [chunk_begin, T + 1] [partials, blocks (norm only)], each
// part 16-byte aligned. Tensors with no elements are left out of the table.
#include <cstring>
#include <limits>
#include <vector>

#include "optimizer.cuh"
#include "optimizer.h"

namespace nuri::kernels {

namespace {

constexpr size_t align16(size_t bytes) { return (bytes + 15) / 16 * 16; }

// The non-empty descriptors and the first block of each (chunk_begin.back() = grid size).
template <class Desc>
struct Table {
  std::vector<Desc> descs;
  std::vector<int64_t> chunk_begin;
  int64_t blocks() const { return chunk_begin.empty() ? 0 : chunk_begin.back(); }
};

template <class Desc>
Table<Desc> make_table(const Desc* tensors, int64_t num_tensors) {
  Table<Desc> table;
  int64_t blocks = 0;
  for (int64_t t = 0; t < num_tensors; ++t) {
    if (tensors[t].n == 0) continue;
    table.descs.push_back(tensors[t]);
    table.chunk_begin.push_back(blocks);
    blocks += ceil_div(tensors[t].n, kOptChunk);
  }
  table.chunk_begin.push_back(blocks);
  NURI_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "multi-tensor launch: ", blocks,
             " blocks exceed the grid limit");
  NURI_CHECK(table.descs.size() <= size_t(std::numeric_limits<int32_t>::max()),
             "multi-tensor launch: too many tensors (", table.descs.size(), ")");
  return table;
}

template <class Desc>
size_t table_bytes(size_t num_tensors) {
  return align16(num_tensors * sizeof(Desc)) + align16((num_tensors + 1) * sizeof(int64_t));
}

// Copies descriptors and prefix table to g_workspace; returns their device addresses. Pageable
// host memory: cudaMemcpyAsync stages it before returning, so the vector may die right after.
template <class Desc>
void upload(const Table<Desc>& table, void* g_workspace, cudaStream_t stream, const Desc** g_descs,
            const int64_t** g_chunk_begin) {
  const size_t desc_bytes = align16(table.descs.size() * sizeof(Desc));
  std::vector<unsigned char> host(desc_bytes + table.chunk_begin.size() * sizeof(int64_t));
  std::memcpy(host.data(), table.descs.data(), table.descs.size() * sizeof(Desc));
  std::memcpy(host.data() + desc_bytes, table.chunk_begin.data(),
              table.chunk_begin.size() * sizeof(int64_t));
  NURI_CUDA_CHECK(
      cudaMemcpyAsync(g_workspace, host.data(), host.size(), cudaMemcpyHostToDevice, stream));
  auto* base = static_cast<unsigned char*>(g_workspace);
  *g_descs = reinterpret_cast<const Desc*>(base);
  *g_chunk_begin = reinterpret_cast<const int64_t*>(base + desc_bytes);
}

}  // namespace

size_t adamw_workspace_bytes(int64_t num_tensors) {
  return table_bytes<AdamWTensorDesc>(size_t(num_tensors));
}

void launch_adamw(const AdamWTensorDesc* tensors, int64_t num_tensors, const AdamWStep& step,
                  void* g_workspace, cudaStream_t stream) {
  Table<AdamWTensorDesc> table = make_table(tensors, num_tensors);
  if (table.descs.empty()) return;
  for (AdamWTensorDesc& d : table.descs) {
    d.vec = aligned(d.param, 16) && aligned(d.grad, 16) && aligned(d.m, 16) && aligned(d.v, 16) &&
            (d.param_bf16 == nullptr || aligned(d.param_bf16, 8));
  }
  AdamWKernelParams p{};
  upload(table, g_workspace, stream, &p.g_tensors, &p.g_chunk_begin);
  p.num_tensors = int32_t(table.descs.size());
  p.hp = step;
  NURI_LAUNCH(adamw_multi, dim3(unsigned(table.blocks())), dim3(kOptThreads), 0, stream, p);
}

size_t global_norm_workspace_bytes(const NormTensorDesc* tensors, int64_t num_tensors) {
  int64_t blocks = 0;
  for (int64_t t = 0; t < num_tensors; ++t) blocks += ceil_div(tensors[t].n, kOptChunk);
  return table_bytes<NormTensorDesc>(size_t(num_tensors)) + size_t(blocks) * sizeof(double);
}

void launch_global_norm(const NormTensorDesc* tensors, int64_t num_tensors, float* g_out,
                        void* g_workspace, cudaStream_t stream) {
  Table<NormTensorDesc> table = make_table(tensors, num_tensors);
  for (NormTensorDesc& d : table.descs) d.vec = aligned(d.g, 16);
  NormFinalParams f{nullptr, table.blocks(), g_out};
  if (!table.descs.empty()) {
    NormPartialParams p{};
    upload(table, g_workspace, stream, &p.g_tensors, &p.g_chunk_begin);
    p.num_tensors = int32_t(table.descs.size());
    p.g_partials = reinterpret_cast<double*>(static_cast<unsigned char*>(g_workspace) +
                                            table_bytes<NormTensorDesc>(table.descs.size()));
    NURI_LAUNCH(global_norm_partials, dim3(unsigned(table.blocks())), dim3(kOptThreads),
                kWarpSize * sizeof(double), stream, p);
    f.g_partials = p.g_partials;
  }
  // With no elements the final block still runs: it writes sqrt(0) = 0.
  NURI_LAUNCH(global_norm_final, dim3(1), dim3(kOptFinalThreads), kWarpSize * sizeof(double),
              stream, f);
}

}  // namespace nuri::kernels
