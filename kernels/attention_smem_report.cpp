// Prints the dynamic shared memory of every attention kernel configuration (ptxas reports only
// static shared memory) and fails if one needs more than an RTX 3090/4090 block may have (sm_86
// and sm_89: 99 KiB). Built and run by scripts/check-kernels.sh; not part of the library.
#include <cstdio>
#include <iterator>
#include <utility>

#include "attention.h"

namespace {

constexpr size_t kMaxSmemSm86 = 99 * 1024;

template <int D>
bool report() {
  using namespace nuri::kernels;
  const size_t sizes[] = {AttnFwdConfig<D>::kSmemBytes, AttnBwdKVConfig<D>::kSmemBytes,
                          AttnBwdQConfig<D>::kSmemBytes};
  std::printf("attention head_dim %-3d  dynamic smem: forward %6zu B, backward dK/dV %6zu B, "
              "backward dQ %6zu B\n", D, sizes[0], sizes[1], sizes[2]);
  bool ok = true;
  for (size_t s : sizes) ok = ok && s <= kMaxSmemSm86;
  if (!ok) std::printf("  head_dim %d: over the %zu bytes a block may use on sm_86/sm_89\n", D, kMaxSmemSm86);
  return ok;
}

template <size_t... I>
bool report_all(std::index_sequence<I...>) {
  return (report<nuri::kernels::kAttentionHeadDims[I]>() & ...);
}

}  // namespace

int main() {
  using nuri::kernels::kAttentionHeadDims;
  return report_all(std::make_index_sequence<std::size(kAttentionHeadDims)>{}) ? 0 : 1;
}
