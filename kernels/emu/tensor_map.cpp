// Tensor maps and tensor tile copies (TMA) under the emulator: cuTensorMapEncodeTiled with the
// driver's documented requirements (cuda.h; on request, set_swizzled_map_alignment, the stricter
// alignment the CUDA Programming Guide gives for swizzled maps), an encoding of the emulator's
// own inside CUtensorMap's opaque bytes, and cp.async.bulk.tensor loads (completed on an
// mbarrier, as the bulk copies of mbarrier.cpp) and stores (in bulk groups, completed at the
// bulk wait).
// Supported: ranks 1-5, element sizes 1-8 bytes, no interleave, element strides of 1, swizzle
// none, 32B, 64B and 128B with the box's inner dimension exactly the swizzle's span (what
// kernels use; the driver also allows less, whose layout the emulator does not claim to know).
#include <cuda.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>

#include "emu/internal.h"
#include "emu/state.h"
#include "nuri/core/error.h"

namespace nuri::emu {

using namespace detail;

namespace {

constexpr uint64_t kMagic = 0x4e5552495f544d41ull;  // "NURI_TMA"
static_assert(sizeof(TensorMap) <= sizeof(CUtensorMap), "the encoding fits the opaque bytes");

int element_size(CUtensorMapDataType t, bool* is_float) {
  *is_float = false;
  switch (t) {
    case CU_TENSOR_MAP_DATA_TYPE_UINT8: return 1;
    case CU_TENSOR_MAP_DATA_TYPE_UINT16: return 2;
    case CU_TENSOR_MAP_DATA_TYPE_UINT32:
    case CU_TENSOR_MAP_DATA_TYPE_INT32: return 4;
    case CU_TENSOR_MAP_DATA_TYPE_UINT64:
    case CU_TENSOR_MAP_DATA_TYPE_INT64: return 8;
    case CU_TENSOR_MAP_DATA_TYPE_FLOAT16:
    case CU_TENSOR_MAP_DATA_TYPE_BFLOAT16: *is_float = true; return 2;
    case CU_TENSOR_MAP_DATA_TYPE_FLOAT32:
    case CU_TENSOR_MAP_DATA_TYPE_FLOAT32_FTZ:
    case CU_TENSOR_MAP_DATA_TYPE_TFLOAT32:
    case CU_TENSOR_MAP_DATA_TYPE_TFLOAT32_FTZ: *is_float = true; return 4;
    case CU_TENSOR_MAP_DATA_TYPE_FLOAT64: *is_float = true; return 8;
    default: return 0;  // the packed 4- and 6-bit types
  }
}

/// The byte offset of box byte `off` (dense, innermost contiguous) after the swizzle, relative
/// to the start of dynamic shared memory (`base` is the box's offset from it).
size_t swizzled(size_t base, size_t off, uint32_t span) {
  const size_t a = base + off;
  if (span == 0) return a;
  const size_t chunks = span / 16;  // 2, 4 or 8: the XOR takes that many 16-byte chunks' bits
  return a ^ (((a >> 7) & (chunks - 1)) << 4);
}

std::atomic<unsigned> g_swizzled_alignment{16};  // set_swizzled_map_alignment

uint64_t box_elements(const TensorMap& m) {
  uint64_t n = 1;
  for (uint32_t d = 0; d < m.rank; ++d) n *= m.box[d];
  return n;
}

/// The decoded map at `tmap`, or a failure naming the instruction.
TensorMap decode(Launch& L, Thread& t, const void* tmap, int rank, const Site& site,
                 const char* op) {
  TensorMap m;
  std::memcpy(&m, tmap, sizeof(m));
  if (m.magic != kMagic) {
    fail(L, t, std::string(op) + " at " + str(site) +
                   ": the tensor map was not made by cuTensorMapEncodeTiled (or was overwritten)");
  }
  if (int(m.rank) != rank) {
    fail(L, t, std::string(op) + " at " + str(site) + ": a " + std::to_string(rank) +
                   "d copy with a tensor map of rank " + std::to_string(m.rank));
  }
  return m;
}

void check_box_in_smem(Launch& L, Thread& t, const void* p, const TensorMap& m, const Site& site,
                       const char* op) {
  const auto* c = static_cast<const unsigned char*>(p);
  const size_t bytes = box_elements(m) * m.esize;
  if (c < L.smem_buf || c + bytes > L.smem_buf + L.smem) {
    fail(L, t, std::string(op) + " at " + str(site) + ": the box (" + std::to_string(bytes) +
                   " bytes) is not inside this block's dynamic shared memory");
  }
  if ((c - L.smem_buf) % 128) {
    fail(L, t, std::string(op) + " at " + str(site) +
                   ": the shared-memory address is not 128-byte aligned");
  }
}

}  // namespace

namespace detail {

void tensor_copy(const TensorCopy& c) {
  // Only the element copies are the unit's accesses: everything else runs ignored, and the
  // pointers they need stay in registers.
  tsan::ignore_begin();
  const TensorMap& m = c.map;
  const uint64_t n = box_elements(m);
  const size_t esize = m.esize;
  const bool load = c.load;
  unsigned char fill[8] = {};
  if (m.oob_nan) {
    if (esize == 2) {
      const uint16_t nan16 = 0x7fff;  // a NaN in both f16 and bf16
      std::memcpy(fill, &nan16, 2);
    } else if (esize == 4) {
      const float f = std::numeric_limits<float>::quiet_NaN();
      std::memcpy(fill, &f, 4);
    } else {
      const double d = std::numeric_limits<double>::quiet_NaN();
      std::memcpy(fill, &d, 8);
    }
  }
  for (uint64_t e = 0; e < n; ++e) {
    // The box index of element e, innermost first, and whether it lies inside the tensor.
    uint64_t rest = e, goff = 0;
    bool inside = true;
    for (uint32_t d = 0; d < m.rank; ++d) {
      const int64_t g = c.coord[d] + int64_t(rest % m.box[d]);
      rest /= m.box[d];
      inside = inside && g >= 0 && uint64_t(g) < m.dim[d];
      if (inside) goff += uint64_t(g) * (d == 0 ? esize : m.stride[d - 1]);
    }
    unsigned char* const sp = c.smem_base + swizzled(c.smem_off, size_t(e) * esize, m.swizzle);
    unsigned char* const gp = reinterpret_cast<unsigned char*>(m.addr) + goff;
    if (!inside) {
      if (!load) continue;  // a store leaves the tensor's outside alone
      tsan::ignore_end();
      std::memset(sp, 0, esize);  // the unit's write of the fill...
      tsan::ignore_begin();
      if (m.oob_nan) std::memcpy(sp, fill, esize);  // ...whose bytes are NaN with the NaN fill
      continue;
    }
    unsigned char* const to = load ? sp : gp;
    const unsigned char* const from = load ? gp : sp;
    tsan::ignore_end();
    std::memcpy(to, from, esize);  // the unit's read and write
    tsan::ignore_begin();
  }
  tsan::ignore_end();
}

}  // namespace detail

void cp_async_bulk_tensor_load(void* dst, const void* tmap, int rank, const int32_t* coord,
                               void* bar, Site site) {
  const char* op = "cp.async.bulk.tensor (load)";
  std::shared_ptr<TensorCopy> copy;
  unsigned bytes;
  {
    // Bookkeeping, ignored: the scheduler frees the copy (and reads its count) later.
    tsan::ignore_begin();  // not RAII: fail() parks inside it
    copy = std::make_shared<TensorCopy>();
    Launch& L = launch_state();
    Thread* t = L.cur;
    copy->map = decode(L, *t, tmap, rank, site, op);
    check_box_in_smem(L, *t, dst, copy->map, site, op);
    for (int d = 0; d < rank; ++d) copy->coord[d] = coord[d];
    copy->smem_base = L.smem_buf;
    copy->smem_off = size_t(static_cast<unsigned char*>(dst) - L.smem_buf);
    copy->load = true;
    bytes = unsigned(box_elements(copy->map) * copy->map.esize);
    tsan::ignore_end();
  }
  // The barrier, its transaction bytes and the copy's poisoning of the box: the bulk copy's.
  cp_async_bulk_enqueue(dst, nullptr, bytes, bar, std::move(copy), site);
}

void cp_async_bulk_tensor_store(const void* tmap, int rank, const int32_t* coord, const void* src,
                                Site site) {
  const char* op = "cp.async.bulk.tensor (store)";
  Thread* t;
  {
    tsan::ignore_begin();  // not RAII: fail() parks inside it
    Launch& L = launch_state();
    t = L.cur;
    TensorCopy c;
    c.map = decode(L, *t, tmap, rank, site, op);
    check_box_in_smem(L, *t, src, c.map, site, op);
    for (int d = 0; d < rank; ++d) c.coord[d] = coord[d];
    c.smem_base = L.smem_buf;
    c.smem_off = size_t(static_cast<const unsigned char*>(src) - L.smem_buf);
    c.load = false;
    const auto* from = static_cast<const unsigned char*>(src);
    c.source.assign(from, from + box_elements(c.map) * c.map.esize);
    c.site = site;
    const uint32_t off = uint32_t(c.smem_off);
    const int64_t stale = async_view_stale(L, &off, 1, c.source.size());
    if (stale >= 0) {
      fail(L, *t, std::string(op) + " at " + str(site) + ": " +
                      async_view_report(stale, "this tensor store (its source)"));
    }
    t->open_stores.push_back(std::move(c));
    tsan::ignore_end();
  }
  // The copy unit takes the thread's history now: what the block wrote to the source before the
  // issue (and the barrier before it) is ordered before the unit's read at the bulk wait. A
  // write after the issue is caught by the wait's comparison with `source`.
  as_copy_unit(*t, true, [] {});
}

void cp_async_bulk_commit(Site) {
  tsan::Ignore ig;
  Thread& t = *launch_state().cur;
  t.store_groups.push_back(std::move(t.open_stores));
  t.open_stores.clear();
}

void cp_async_bulk_wait(int pending, Site site) {
  Thread* t;
  std::vector<TensorCopy> done;
  {
    tsan::ignore_begin();  // not RAII: fail() parks inside it
    Launch& L = launch_state();
    t = L.cur;
    if (pending < 0) fail(L, *t, "cp.async.bulk.wait_group at " + str(site) + ": negative count");
    while (int(t->store_groups.size()) > pending) {
      for (TensorCopy& c : t->store_groups.front()) done.push_back(std::move(c));
      t->store_groups.erase(t->store_groups.begin());
    }
    for (const TensorCopy& c : done) {
      if (std::memcmp(c.smem_base + c.smem_off, c.source.data(), c.source.size()) != 0) {
        fail(L, *t, "cp.async.bulk.wait_group at " + str(site) + ": the source of the tensor " +
                        "store issued at " + str(c.site) + " was written after the issue and " +
                        "before this wait (a GPU may have read either value)");
      }
    }
    tsan::ignore_end();
  }
  if (done.empty()) return;
  // The unit (which took the thread's history at each issue, not now) reads the sources and
  // writes the tensor; the thread then takes the unit's history.
  const TensorCopy* const first = done.data();
  const size_t count = done.size();
  as_copy_unit(*t, false, [first, count] {
    for (size_t i = 0; i < count; ++i) tensor_copy(first[i]);
  });
  tsan::acquire(&t->engine_done);
}

unsigned set_swizzled_map_alignment(unsigned bytes) {
  NURI_CHECK(bytes >= 16 && (bytes & (bytes - 1)) == 0,
             "set_swizzled_map_alignment: ", bytes, " is not a power of two of at least 16");
  return g_swizzled_alignment.exchange(bytes);
}

}  // namespace nuri::emu

// ---- the driver call ---------------------------------------------------------------------------

extern "C" CUresult cuTensorMapEncodeTiled(CUtensorMap* tensorMap, CUtensorMapDataType dtype,
                                           cuuint32_t rank, void* globalAddress,
                                           const cuuint64_t* globalDim,
                                           const cuuint64_t* globalStrides,
                                           const cuuint32_t* boxDim,
                                           const cuuint32_t* elementStrides,
                                           CUtensorMapInterleave interleave,
                                           CUtensorMapSwizzle swizzle,
                                           CUtensorMapL2promotion l2Promotion,
                                           CUtensorMapFloatOOBfill oobFill) {
  using nuri::emu::detail::TensorMap;
  if (!tensorMap || reinterpret_cast<uintptr_t>(tensorMap) % 64) return CUDA_ERROR_INVALID_VALUE;
  if (rank == 0 || rank > 5) return CUDA_ERROR_INVALID_VALUE;
  if (interleave != CU_TENSOR_MAP_INTERLEAVE_NONE) return CUDA_ERROR_NOT_SUPPORTED;
  bool is_float = false;
  const int esize = nuri::emu::element_size(dtype, &is_float);
  if (esize == 0) return CUDA_ERROR_NOT_SUPPORTED;
  if (!globalAddress || reinterpret_cast<uintptr_t>(globalAddress) % 16) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  if (!globalDim || !boxDim || !elementStrides || (rank > 1 && !globalStrides)) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  TensorMap m;
  m.magic = nuri::emu::kMagic;
  m.addr = reinterpret_cast<uint64_t>(globalAddress);
  m.rank = uint8_t(rank);
  m.esize = uint8_t(esize);
  for (cuuint32_t d = 0; d < rank; ++d) {
    if (globalDim[d] == 0 || globalDim[d] > (uint64_t(1) << 32)) return CUDA_ERROR_INVALID_VALUE;
    if (boxDim[d] == 0 || boxDim[d] > 256) return CUDA_ERROR_INVALID_VALUE;
    if (elementStrides[d] == 0 || elementStrides[d] > 8) return CUDA_ERROR_INVALID_VALUE;
    if (d > 0 && elementStrides[d] != 1) return CUDA_ERROR_NOT_SUPPORTED;  // the emulator's
    m.dim[d] = globalDim[d];
    m.box[d] = boxDim[d];
    if (d > 0) {
      const uint64_t s = globalStrides[d - 1];
      if (s % 16 || s >= (uint64_t(1) << 40)) return CUDA_ERROR_INVALID_VALUE;
      m.stride[d - 1] = s;
    }
  }
  const uint64_t inner = uint64_t(boxDim[0]) * uint64_t(esize);
  if (inner % 16) return CUDA_ERROR_INVALID_VALUE;
  switch (swizzle) {
    case CU_TENSOR_MAP_SWIZZLE_NONE: m.swizzle = 0; break;
    case CU_TENSOR_MAP_SWIZZLE_32B: m.swizzle = 32; break;
    case CU_TENSOR_MAP_SWIZZLE_64B: m.swizzle = 64; break;
    case CU_TENSOR_MAP_SWIZZLE_128B: m.swizzle = 128; break;
    default: return CUDA_ERROR_NOT_SUPPORTED;  // the 128B atom variants
  }
  if (m.swizzle != 0 && inner > m.swizzle) return CUDA_ERROR_INVALID_VALUE;
  if (m.swizzle != 0 && inner != m.swizzle) return CUDA_ERROR_NOT_SUPPORTED;  // the emulator's
  if (m.swizzle != 0) {  // cuda.h's 16 (checked above), or the stricter reading if set
    const unsigned align = nuri::emu::g_swizzled_alignment.load();
    if (m.addr % align) return CUDA_ERROR_INVALID_VALUE;
    for (cuuint32_t d = 1; d < rank; ++d) {
      if (m.stride[d - 1] % align) return CUDA_ERROR_INVALID_VALUE;
    }
  }
  if (unsigned(l2Promotion) > unsigned(CU_TENSOR_MAP_L2_PROMOTION_L2_256B)) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  if (oobFill == CU_TENSOR_MAP_FLOAT_OOB_FILL_NAN_REQUEST_ZERO_FMA) {
    if (!is_float) return CUDA_ERROR_INVALID_VALUE;
    m.oob_nan = 1;
  } else if (oobFill != CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  std::memset(tensorMap, 0, sizeof(*tensorMap));
  std::memcpy(tensorMap, &m, sizeof(m));
  return CUDA_SUCCESS;
}
