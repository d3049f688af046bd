// Prints the dynamic shared memory and block size of every attention and tensor-core GEMM
// configuration (ptxas reports only static shared memory) and fails if one needs more than an
// RTX 3090/4090 block may have (sm_86 and sm_89: 99 KiB). With --tsv, one line per
// configuration for scripts/kernel_report.py: family, key (head dim or tile edge), bytes,
// threads. Built and run by scripts/check-kernels.sh; not part of the library.
#include <cstdio>
#include <cstring>
#include <iterator>
#include <utility>

#include "attention.h"
#include "matmul.h"

namespace {

constexpr size_t kMaxSmemSm86 = 99 * 1024;
bool g_tsv = false;

bool row(const char* family, int key, size_t bytes, int threads) {
  if (g_tsv) std::printf("%s\t%d\t%zu\t%d\n", family, key, bytes, threads);
  if (bytes <= kMaxSmemSm86) return true;
  std::fprintf(stderr, "%s (%d): %zu bytes of shared memory, over the %zu a block may use on "
               "sm_86/sm_89\n", family, key, bytes, kMaxSmemSm86);
  return false;
}

template <int D>
bool report() {
  using namespace nuri::kernels;
  if (!g_tsv) {
    std::printf("attention head_dim %-3d  dynamic smem: forward %6zu B, backward dK/dV %6zu B, "
                "backward dQ %6zu B\n", D, AttnFwdConfig<D>::kSmemBytes,
                AttnBwdKVConfig<D>::kSmemBytes, AttnBwdQConfig<D>::kSmemBytes);
  }
  bool ok = row("attention_fwd_kernel", D, AttnFwdConfig<D>::kSmemBytes, AttnFwdConfig<D>::kThreads);
  ok &= row("attn_bwd_dkdv", D, AttnBwdKVConfig<D>::kSmemBytes, AttnBwdKVConfig<D>::kThreads);
  ok &= row("attn_bwd_dq", D, AttnBwdQConfig<D>::kSmemBytes, AttnBwdQConfig<D>::kThreads);
  return ok;
}

template <class C>
bool report_gemm() {
  if (!g_tsv) {
    std::printf("gemm tile %dx%dx%d, %d threads  dynamic smem %6zu B\n", C::kBlockM, C::kBlockN,
                C::kBlockK, C::kThreads, C::kSmemBytes);
  }
  return row("gemm_tc_kernel", C::kBlockM, C::kSmemBytes, C::kThreads);
}

template <size_t... I>
bool report_all(std::index_sequence<I...>) {
  return (report<nuri::kernels::kAttentionHeadDims[I]>() & ...);
}

}  // namespace

int main(int argc, char** argv) {
  using nuri::kernels::kAttentionHeadDims;
  g_tsv = argc > 1 && std::strcmp(argv[1], "--tsv") == 0;
  bool ok = report_all(std::make_index_sequence<std::size(kAttentionHeadDims)>{});
  ok &= report_gemm<nuri::kernels::mm::TcLarge>();
  ok &= report_gemm<nuri::kernels::mm::TcSmall>();
  return ok ? 0 : 1;
}
