// Prints the dynamic shared memory and block size of every attention and tensor-core GEMM
// configuration (ptxas reports only static shared memory) and fails if one needs more than a
// block may have on the GPUs that run it (sm_86 and sm_89: 99 KiB; the sm_90a kernels: 227
// KiB). With --tsv, one line per configuration for scripts/kernel_report.py: family (or
// family/N: its kernels whose last template argument is N), key (head dim or tile edge), bytes,
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

constexpr size_t kMaxSmemSm90 = 227 * 1024;

/// `limit`: the most a block may use on the GPUs that run the kernel (sm_86/sm_89 for the
/// sm_80-class kernels, sm_90 for the sm_90a ones).
bool row(const char* family, int key, size_t bytes, int threads, size_t limit = kMaxSmemSm86) {
  if (g_tsv) std::printf("%s\t%d\t%zu\t%d\n", family, key, bytes, threads);
  if (bytes <= limit) return true;
  std::fprintf(stderr, "%s (%d): %zu bytes of shared memory, over the %zu a block may use on "
               "%s\n", family, key, bytes, limit, limit == kMaxSmemSm86 ? "sm_86/sm_89" : "sm_90");
  return false;
}

template <int D>
bool report() {
  using namespace nuri::kernels;
  if (!g_tsv) {
    std::printf("attention head_dim %-3d  dynamic smem: forward %6zu B (swizzled %6zu B; "
                "128-row blocks %6zu B, on 32-key tiles %6zu B), backward dK/dV %6zu B, backward "
                "dQ %6zu B, sm_90a forward %6zu B, sm_90a backward (each) %6zu B\n", D,
                AttnFwdConfig<D>::kSmemBytes, AttnFwdConfig<D, 16, 64, true>::kSmemBytes,
                AttnFwdConfig<D, 32>::kSmemBytes, AttnFwdConfig<D, 32, 32>::kSmemBytes,
                AttnBwdKVConfig<D>::kSmemBytes,
                AttnBwdQConfig<D>::kSmemBytes, AttnFwdSm90Config<D>::kSmemBytes,
                AttnBwdSm90Config<D>::kSmemBytes);
  }
  // family/N: the kernels whose last template argument is N (swizzled or not; the key tile).
  bool ok = row("attention_fwd_kernel/false", D, AttnFwdConfig<D>::kSmemBytes,
                AttnFwdConfig<D>::kThreads);
  ok &= row("attention_fwd_kernel/true", D, AttnFwdConfig<D, 16, 64, true>::kSmemBytes,
            AttnFwdConfig<D, 16, 64, true>::kThreads);
  ok &= row("attention_fwd_q128_kernel/64", D, AttnFwdConfig<D, 32>::kSmemBytes,
            AttnFwdConfig<D, 32>::kThreads);
  ok &= row("attention_fwd_q128_kernel/32", D, AttnFwdConfig<D, 32, 32>::kSmemBytes,
            AttnFwdConfig<D, 32, 32>::kThreads);
  ok &= row("attn_bwd_dkdv", D, AttnBwdKVConfig<D>::kSmemBytes, AttnBwdKVConfig<D>::kThreads);
  ok &= row("attn_bwd_dq", D, AttnBwdQConfig<D>::kSmemBytes, AttnBwdQConfig<D>::kThreads);
  ok &= row("attention_fwd_sm90_kernel", D, AttnFwdSm90Config<D>::kSmemBytes,
            AttnFwdSm90Config<D>::kThreads, kMaxSmemSm90);
  for (const char* family : {"attn_bwd_dkdv_sm90_kernel", "attn_bwd_dq_sm90_kernel"}) {
    ok &= row(family, D, AttnBwdSm90Config<D>::kSmemBytes, AttnBwdSm90Config<D>::kThreads,
              kMaxSmemSm90);
  }
  return ok;
}

template <class C>
bool report_gemm() {
  if (!g_tsv) {
    std::printf("gemm tile %dx%dx%d, %d threads  dynamic smem %6zu B\n", C::kBlockM, C::kBlockN,
                C::kBlockK, C::kThreads, C::kSmemBytes);
  }
  return row("gemm_tc_kernel", C::kBlockN, C::kSmemBytes, C::kThreads);  // keyed by N
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
  ok &= report_gemm<nuri::kernels::mm::TcWide>();
  ok &= report_gemm<nuri::kernels::mm::TcLarge>();
  ok &= report_gemm<nuri::kernels::mm::TcSmall>();
  using Sm90 = nuri::kernels::mm::Sm90Config;
  if (!g_tsv) {
    std::printf("gemm sm_90a tile %dx%dx%d, %d stages, %d threads  dynamic smem %6zu B\n",
                Sm90::kBlockM, Sm90::kBlockN, Sm90::kBlockK, Sm90::kStages, Sm90::kThreads,
                Sm90::kSmemBytes);
  }
  ok &= row("gemm_sm90_kernel", Sm90::kBlockM, Sm90::kSmemBytes, Sm90::kThreads, kMaxSmemSm90);
  return ok ? 0 : 1;
}
