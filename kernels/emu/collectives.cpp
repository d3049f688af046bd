// Warp collectives under the emulator: shuffles, votes, __syncwarp, mma.sync m16n8k16 and
// ldmatrix, each a rendezvous of the lanes named by the mask whose result is computed once,
// exactly as the PTX ISA defines it (../shared/EMULATION.md), when all have arrived.
#include <cstring>
#include <sstream>

#include "emu/ptx_math.h"
#include "emu/state.h"
#include "nuri/core/error.h"

namespace nuri::emu {
namespace detail {

// ---- the rendezvous -----------------------------------------------------------------------------

static uint16_t half_of(uint32_t w, int i) { return uint16_t(i ? w >> 16 : w & 0xffffu); }

/// Computes the results of one completed collective for every lane of `lanes` (indices into
/// the warp's threads, by lane number; null for lanes that do not exist).
std::string compute(const Arrival& op, Thread* const lanes[32]) {
  switch (op.kind) {
    case OpKind::shfl: {
      const int width = op.width;
      const int segmask = ~(width - 1) & 31;
      const int cval = Shfl(op.mode) == Shfl::up ? 0 : 31;
      for (int lane = 0; lane < 32; ++lane) {
        if (!lanes[lane] || !(op.mask >> lane & 1u)) continue;
        const int b = lanes[lane]->op.arg & 31;
        const int max_lane = (lane & segmask) | (cval & ~segmask);
        const int min_lane = lane & segmask;
        int j = lane;
        bool pval = false;
        switch (Shfl(op.mode)) {
          case Shfl::up: j = lane - b; pval = j >= max_lane; break;
          case Shfl::down: j = lane + b; pval = j <= max_lane; break;
          case Shfl::bfly: j = lane ^ b; pval = j <= max_lane; break;
          case Shfl::idx: j = min_lane | (b & ~segmask); pval = j <= max_lane; break;
        }
        if (!pval) j = lane;
        if (!(op.mask >> j & 1u)) {  // PTX leaves this undefined; here it is an error
          std::ostringstream os;
          os << "shuffle at " << str(op.site) << ": lane " << lane << " reads lane " << j
             << ", which is not in the mask 0x" << std::hex << op.mask;
          return os.str();
        }
        lanes[lane]->out[0] = lanes[j]->op.in[0];
      }
      break;
    }
    case OpKind::vote: {
      unsigned ballot = 0;
      for (int lane = 0; lane < 32; ++lane) {
        if (lanes[lane] && (op.mask >> lane & 1u) && lanes[lane]->op.in[0]) ballot |= 1u << lane;
      }
      uint32_t r = ballot;
      if (Vote(op.mode) == Vote::any) r = ballot != 0;
      if (Vote(op.mode) == Vote::all) r = ballot == op.mask;
      for (int lane = 0; lane < 32; ++lane) {
        if (lanes[lane] && (op.mask >> lane & 1u)) lanes[lane]->out[0] = r;
      }
      break;
    }
    case OpKind::syncwarp:
      break;
    case OpKind::mma: {
      // Gather A [16x16], B [16x8] (K x N), C [16x8] from the fragments (EMULATION.md layout).
      float A[16][16], B[16][8], C[16][8];
      const bool bf16 = op.mode == 1;
      for (int lane = 0; lane < 32; ++lane) {
        const uint32_t* in = lanes[lane]->op.in;
        const int g = lane >> 2, t = lane % 4;
        const int arow[4] = {g, g + 8, g, g + 8}, acol[4] = {2 * t, 2 * t, 2 * t + 8, 2 * t + 8};
        for (int r = 0; r < 4; ++r) {
          for (int h = 0; h < 2; ++h) A[arow[r]][acol[r] + h] = half_to_float(half_of(in[r], h), bf16);
        }
        for (int r = 0; r < 2; ++r) {
          for (int h = 0; h < 2; ++h) B[2 * t + 8 * r + h][g] = half_to_float(half_of(in[4 + r], h), bf16);
        }
        float c[4];
        std::memcpy(c, in + 6, sizeof c);
        C[g][2 * t] = c[0];
        C[g][2 * t + 1] = c[1];
        C[g + 8][2 * t] = c[2];
        C[g + 8][2 * t + 1] = c[3];
      }
      for (int lane = 0; lane < 32; ++lane) {
        const int g = lane >> 2, t = lane % 4;
        const int rows[4] = {g, g, g + 8, g + 8}, cols[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
        for (int r = 0; r < 4; ++r) {
          float acc = C[rows[r]][cols[r]];
          for (int k = 0; k < 16; ++k) acc += A[rows[r]][k] * B[k][cols[r]];  // exact products
          std::memcpy(&lanes[lane]->out[r], &acc, 4);
        }
      }
      break;
    }
    case OpKind::ldmatrix: {
      const int count = op.mode >> 1;
      const bool trans = op.mode & 1;
      for (int lane = 0; lane < 32; ++lane) {
        const int q = lane >> 2, t = lane % 4;
        for (int j = 0; j < count; ++j) {
          uint32_t lo, hi;
          if (!trans) {  // {M_j[q][2t], M_j[q][2t+1]}: word t of row q
            const uint32_t w = lanes[8 * j + q]->op.in[t];
            lo = half_of(w, 0);
            hi = half_of(w, 1);
          } else {  // {M_j[2t][q], M_j[2t+1][q]}
            lo = half_of(lanes[8 * j + 2 * t]->op.in[q / 2], q % 2);
            hi = half_of(lanes[8 * j + 2 * t + 1]->op.in[q / 2], q % 2);
          }
          lanes[lane]->out[j] = lo | hi << 16;
        }
      }
      break;
    }
  }
  return "";
}

/// Deposits this lane's part of a warp collective, waits for the others, and returns with
/// t.out holding its result.
void warp_collective(const Arrival& a) {
  tsan::ignore_begin();
  Launch& L = launch_state();
  Thread& t = *L.cur;
  const int lane = t.linear % 32;
  if (!(a.mask >> lane & 1u)) {
    std::ostringstream os;
    os << "warp collective at " << str(a.site) << ": the calling lane " << lane
       << " is not in the mask 0x" << std::hex << a.mask;
    fail(L, t, os.str());
  }
  const int warp_base = t.linear - lane;
  for (int l = 0; l < 32; ++l) {
    if ((a.mask >> l & 1u) && warp_base + l >= L.threads_per_block) {
      std::ostringstream os;
      os << "warp collective at " << str(a.site) << ": mask 0x" << std::hex << a.mask << std::dec
         << " names lane " << l << ", which does not exist (the block has " << L.threads_per_block
         << " threads)";
      fail(L, t, os.str());
    }
  }
  t.op = a;
  t.wait = Wait::warp;
  t.site = a.site;
  park(L, t);
  tsan::acquire(t.sync.get());  // sync ops still count inside an ignore region
  t.sync.reset();
  tsan::ignore_end();
}

}  // namespace detail

using namespace detail;

// ---- the builtins ---------------------------------------------------------------------------------

void syncwarp(unsigned mask, Site site) {
  Arrival a;
  a.kind = OpKind::syncwarp;
  a.mask = mask;
  a.site = site;
  warp_collective(a);
}

uint32_t shfl(Shfl mode, unsigned mask, uint32_t value, int lane_arg, int width, Site site) {
  if (width < 1 || width > 32 || (width & (width - 1)) != 0) {
    tsan::ignore_begin();
    Launch& L = launch_state();
    fail(L, *L.cur, "shuffle at " + str(site) + ": width " + std::to_string(width) +
                        " is not a power of two in [1, 32]");
  }
  Arrival a;
  a.kind = OpKind::shfl;
  a.mode = int(mode);
  a.mask = mask;
  a.arg = lane_arg;
  a.width = width;
  a.in[0] = value;
  a.site = site;
  warp_collective(a);
  tsan::Ignore ig;
  return launch_state().cur->out[0];
}

unsigned vote(Vote mode, unsigned mask, bool predicate, Site site) {
  Arrival a;
  a.kind = OpKind::vote;
  a.mode = int(mode);
  a.mask = mask;
  a.in[0] = predicate;
  a.site = site;
  warp_collective(a);
  tsan::Ignore ig;
  return launch_state().cur->out[0];
}

void mma_m16n8k16(bool bf16, float d[4], const uint32_t a[4], const uint32_t b[2],
                  const float c[4], Site site) {
  Arrival op;
  op.kind = OpKind::mma;
  op.mode = bf16 ? 1 : 0;
  op.mask = 0xffffffffu;
  op.site = site;
  std::memcpy(op.in, a, 16);
  std::memcpy(op.in + 4, b, 8);
  std::memcpy(op.in + 6, c, 16);
  warp_collective(op);
  tsan::Ignore ig;
  std::memcpy(d, launch_state().cur->out, 16);
}

void ldmatrix(int count, bool trans, const void* row, uint32_t* out, Site site) {
  Launch* L = nullptr;
  int lane = 0;
  {
    tsan::ignore_begin();  // not RAII: fail() parks inside it (an abandoned fiber is unwound)
    L = &launch_state();
    lane = L->cur->linear % 32;
    if (count != 1 && count != 2 && count != 4) {
      fail(*L, *L->cur, "ldmatrix at " + str(site) + ": .x" + std::to_string(count) +
                            " (must be x1, x2 or x4)");
    }
    if (lane < 8 * count && reinterpret_cast<uintptr_t>(row) % 16 != 0) {
      fail(*L, *L->cur, "ldmatrix at " + str(site) + ": lane " + std::to_string(lane) +
                            " gives a row address that is not 16-byte aligned");
    }
    if (lane < 8 * count) {
      const std::string bad = shared_address_problem(*L, row, 16);
      if (!bad.empty()) {
        fail(*L, *L->cur, "ldmatrix at " + str(site) + ": lane " + std::to_string(lane) +
                              "'s 16-byte row " + bad + " (ldmatrix reads shared memory)");
      }
    }
    tsan::ignore_end();
  }
  Arrival op;
  op.kind = OpKind::ldmatrix;
  op.mode = count * 2 + (trans ? 1 : 0);
  op.mask = 0xffffffffu;
  op.site = site;
  op.addr = row;
  if (lane < 8 * count) std::memcpy(op.in, row, 16);  // this lane's read, seen by TSan
  warp_collective(op);
  tsan::Ignore ig;
  std::memcpy(out, L->cur->out, size_t(count) * 4);
}

}  // namespace nuri::emu
