// `auto` attention (csrc/backend/cuda/attention.cpp): on a GPU the first call of each direction
// and shape runs every implementation the device and build have, and later calls run the
// fastest of those whose outputs agree with nuri's kernels. The emulator times everything at
// 0 ms, so nuri's kernels keep winning there; NURI_EMU_MEASURE=1 makes it measure all the same,
// which runs the measuring code here: the kernels each first and later call launch (the
// emulator's launch records), outputs bit for bit those of NURI_ATTENTION=nuri, in plain and in
// fused-QKV layouts (whose dq, dk and dv are compared through their strides), no disagreement
// reported between correct kernels; and the agreement test on planted differences. Emulated tree only (test_ops on cuda-emu).
#include <cmath>
#include <string>

#include "backend/cuda/outputs_agree.h"
#include "emu/emu.h"
#include "ops/harness.h"

namespace nuri::test {
namespace {

TEST(AttentionAuto, AgreementNeedsEveryValueCloseAndTheSameNonFiniteValues) {
  using cuda::outputs_agree;
  const float nan = NAN, inf = INFINITY, tol = 1.f / 32;
  // Within 1/32 of the largest |value| (2): 0.0625.
  EXPECT_TRUE(outputs_agree({1.f, -2.f, 0.5f}, {1.05f, -2.f, 0.5f}, tol, 0.f));
  EXPECT_FALSE(outputs_agree({1.f, -2.f, 0.5f}, {1.f, -2.f, 0.57f}, tol, 0.f));
  EXPECT_TRUE(outputs_agree({0.f, 0.f}, {0.f, 5e-4f}, tol, 1e-3f));
  // A NaN or an infinity in theirs where mine has a number, down to a candidate of only NaN.
  EXPECT_FALSE(outputs_agree({1.f, 2.f}, {nan, 2.f}, tol, 0.f));
  EXPECT_FALSE(outputs_agree({1.f, 2.f}, {nan, nan}, tol, 0.f));
  EXPECT_FALSE(outputs_agree({1.f, 2.f}, {1.f, inf}, tol, 0.f));
  // Mine not finite: theirs must match it, and the rest is held to the finite values' scale.
  EXPECT_TRUE(outputs_agree({nan, 2.f}, {nan, 2.f}, tol, 0.f));
  EXPECT_FALSE(outputs_agree({nan, 2.f}, {1.f, 2.f}, tol, 0.f));
  EXPECT_TRUE(outputs_agree({-inf, 2.f}, {-inf, 2.f}, tol, 0.f));
  EXPECT_FALSE(outputs_agree({-inf, 2.f}, {inf, 2.f}, tol, 0.f));
  EXPECT_FALSE(outputs_agree({-inf, 2.f}, {-inf, 2.5f}, tol, 0.f));
  EXPECT_FALSE(outputs_agree({1.f}, {1.f, 2.f}, tol, 0.f));
}

// What the comparison reads of nuri's outputs: a view's elements through its strides. Here dk
// of a fused [B=2, T=3, H + 2·Hkv = 4, D=2] buffer (H 2, Hkv 1): head 2 of every row.
TEST(AttentionAuto, AViewsValuesAreReadThroughItsStrides) {
  const int64_t b = 2, t = 3, all = 4, d = 2, sb = t * all * d, st = all * d, sh = d;
  std::vector<float> buf(size_t(b * sb));
  for (size_t i = 0; i < buf.size(); ++i) buf[i] = float(i);
  const int64_t first = 2 * d;  // dk's first element: head 2 of row 0
  const int64_t span = cuda::view_span(b, t, 1, d, sb, st, sh);
  EXPECT_EQ(span, sb + 2 * st + d);
  const std::vector<float> from(buf.begin() + first, buf.begin() + first + span);
  std::vector<float> want;
  for (int64_t row = 0; row < b * t; ++row) {
    want.push_back(float(row * st + first));
    want.push_back(float(row * st + first + 1));
  }
  EXPECT_EQ(cuda::view_values(from, b, t, 1, d, sb, st, sh), want);
  // A contiguous [B, T, H, D] tensor reads as it lies.
  const std::vector<float> plain(buf.begin(), buf.begin() + b * t * 2 * d);
  EXPECT_EQ(cuda::view_values(plain, b, t, 2, d, t * 2 * d, 2 * d, d), plain);
}

/// Launches whose kernel name contains `part`.
int launches_of(const std::vector<emu::LaunchCounters>& launches, const std::string& part) {
  int n = 0;
  for (const auto& l : launches) n += l.kernel.find(part) != std::string::npos;
  return n;
}

TEST(AttentionAuto, FirstCallMeasuresEveryPathAndLaterCallsRunTheChoice) {
  const std::string name = backends().front();
  if (name != "cuda-emu") GTEST_SKIP() << "the launch records exist on the emulated backend only";
  ScopedEnv measure("NURI_EMU_MEASURE", "1");
  auto [automatic, why] = make_backend_with(name, "NURI_ATTENTION", "auto");
  ASSERT_TRUE(automatic) << why;
  auto [nuri, why_nuri] = make_backend_with(name, "NURI_ATTENTION", "nuri");
  ASSERT_TRUE(nuri) << why_nuri;
  struct Case {
    int64_t d;
    bool causal, fused;
  };
  for (const Case& c : {Case{64, true, false}, Case{128, false, true}}) {
    SCOPED_TRACE("D " + std::to_string(c.d) + (c.causal ? " causal" : " full") +
                 (c.fused ? " fused QKV" : ""));
    const int64_t b = 1, t = 40, h = 2, hkv = 1, d = c.d;
    const Shape qs{b, t, h, d}, ks{b, t, hkv, d}, all{b, t, h + 2 * hkv, d};
    const Vec x = random_vec(b * t * (h + 2 * hkv) * d, 81),
              dout = random_vec(b * t * h * d, 82);
    AttentionOptions opt;
    opt.causal = c.causal;
    // Heads [from, to) of each row of x.
    auto heads = [&](int64_t from, int64_t to) {
      Vec r;
      for (int64_t row = 0; row < b * t; ++row) {
        const auto first = x.begin() + (row * (h + 2 * hkv) + from) * d;
        r.insert(r.end(), first, first + (to - from) * d);
      }
      return r;
    };
    // q, k, v (and dq, dk, dv): views of one [B, T, H + 2·Hkv, D] buffer when fused, else
    // tensors of their own holding the same values.
    // Fused: buf is the buffer (the values to read back; views cannot be copied to the host).
    struct Qkv {
      Tensor q, k, v, buf;
    };
    auto split = [&](Backend& be, bool zero) {
      if (!c.fused) {
        if (zero) return Qkv{zeros(be, qs), zeros(be, ks), zeros(be, ks), Tensor()};
        return Qkv{on(be, qs, heads(0, h)), on(be, ks, heads(h, h + hkv)),
                   on(be, ks, heads(h + hkv, h + 2 * hkv)), Tensor()};
      }
      const Tensor buf = zero ? zeros(be, all) : on(be, all, x);
      return Qkv{buf.slice(2, 0, h), buf.slice(2, h, h + hkv), buf.slice(2, h + hkv, h + 2 * hkv),
                 buf};
    };
    // Two forward and two backward calls; their outputs and each call's launches.
    auto run = [&](Backend& be, std::vector<std::vector<emu::LaunchCounters>>& launched) {
      const Qkv in = split(be, false), grad = split(be, true);
      const Tensor &q = in.q, &k = in.k, &v = in.v, &dq = grad.q, &dk = grad.k, &dv = grad.v;
      Tensor out = be.empty(qs, DType::bf16), lse = zeros_f32(be, {b, h, t});
      const Tensor tdout = on(be, qs, dout);
      emu::set_counters(true);
      emu::take_counters();
      for (int i = 0; i < 2; ++i) {
        be.attention(q, k, v, out, lse, opt);
        launched.push_back(emu::take_counters());
      }
      for (int i = 0; i < 2; ++i) {
        be.attention_backward(q, k, v, out, lse, tdout, dq, dk, dv, opt);
        launched.push_back(emu::take_counters());
      }
      emu::set_counters(false);
      if (c.fused) return std::vector<Vec>{values(be, out), values(be, lse), values(be, grad.buf)};
      return std::vector<Vec>{values(be, out), values(be, lse), values(be, dq), values(be, dk),
                              values(be, dv)};
    };
    std::vector<std::vector<emu::LaunchCounters>> by_auto, by_nuri;
    testing::internal::CaptureStderr();
    const std::vector<Vec> got = run(*automatic, by_auto);
    const std::string printed = testing::internal::GetCapturedStderr();
    EXPECT_EQ(printed.find("disagrees"), std::string::npos) << printed;
    const std::vector<Vec> want = run(*nuri, by_nuri);
    const char* what[] = {"out", "lse", "dq (fused: dq, dk, dv)", "dk", "dv"};
    for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(got[i], want[i]) << what[i];

    // The first forward: nuri's 64-row kernel into the outputs, the 128-row and sm_90a
    // forwards into copies, each once to warm up and once timed; the second: nuri's kernel
    // alone (0 ms ties keep it). The same for the backward, without the 128-row path.
    const int want_fwd[2][3] = {{2, 2, 2}, {1, 0, 0}};
    for (int call = 0; call < 2; ++call) {
      SCOPED_TRACE("forward call " + std::to_string(call + 1));
      EXPECT_EQ(launches_of(by_auto[size_t(call)], "attention_fwd_kernel"), want_fwd[call][0]);
      EXPECT_EQ(launches_of(by_auto[size_t(call)], "attention_fwd_q128_kernel"),
                want_fwd[call][1]);
      EXPECT_EQ(launches_of(by_auto[size_t(call)], "attention_fwd_sm90_kernel"),
                want_fwd[call][2]);
    }
    for (int call = 0; call < 2; ++call) {
      SCOPED_TRACE("backward call " + std::to_string(call + 1));
      const auto& l = by_auto[size_t(2 + call)];
      EXPECT_EQ(launches_of(l, "attn_bwd_dkdv<"), call == 0 ? 2 : 1);
      EXPECT_EQ(launches_of(l, "attn_bwd_dkdv_sm90_kernel"), call == 0 ? 2 : 0);
      EXPECT_EQ(launches_of(l, "attention_fwd"), 0);
    }
    // NURI_ATTENTION=nuri measures nothing.
    for (const auto& l : by_nuri) {
      EXPECT_EQ(launches_of(l, "q128") + launches_of(l, "sm90"), 0);
    }
  }
}

// cuda.h asks 16-byte aligned addresses and strides of a tensor map; the Programming Guide's
// TMA table asks 128 of a swizzled one, which the sm_90a kernels' maps are. Where a driver
// refuses a map, the sm_90a path declines before launching anything (the backward's Di pass
// included): under auto the other paths run, and NURI_ATTENTION=sm90 is an error that writes
// nothing. Modelled with the emulator's stricter alignment, on views whose heads are 160 bytes
// apart (D 64 in rows padded to 80).
TEST(AttentionAuto, TheSm90PathDeclinesTensorMapsTheDriverRefuses) {
  const std::string name = backends().front();
  if (name != "cuda-emu") GTEST_SKIP() << "the stricter alignment is modelled by the emulator";
  ScopedEnv measure("NURI_EMU_MEASURE", "1");
  const int64_t b = 1, t = 40, h = 2, hkv = 1, d = 64, pad = 16;
  const Shape qs{b, t, h, d}, ks{b, t, hkv, d};
  AttentionOptions opt;
  opt.causal = true;
  // A [B, T, heads, D] view of rows padded to D + 16.
  auto padded = [&](Backend& be, int64_t heads, uint64_t seed) {
    return on(be, {b, t, heads, d + pad}, random_vec(b * t * heads * (d + pad), seed))
        .slice(3, 0, d);
  };
  struct Restore {
    unsigned align = emu::set_swizzled_map_alignment(16);
    ~Restore() { emu::set_swizzled_map_alignment(align); }
  } restore;
  // One direction's launches, and the error that stopped it.
  struct Direction {
    std::vector<emu::LaunchCounters> launches;
    std::string error;
  };
  struct Run {
    std::vector<Vec> outputs;  // out, lse, dq, dk, dv (zero where nothing was written)
    Direction fwd, bwd;
  };
  // Forward, then backward, on `be`, with swizzled maps aligned to fwd_align, then bwd_align.
  auto run = [&](Backend& be, unsigned fwd_align, unsigned bwd_align) {
    Run r;
    const Tensor q = padded(be, h, 91), k = padded(be, hkv, 92), v = padded(be, hkv, 93);
    Tensor out = zeros(be, qs), lse = zeros_f32(be, {b, h, t}), dq = zeros(be, qs),
           dk = zeros(be, ks), dv = zeros(be, ks);
    const Tensor dout = on(be, qs, random_vec(b * t * h * d, 94));
    auto direction = [](Direction& dir, unsigned align, const auto& call) {
      emu::set_swizzled_map_alignment(align);
      emu::set_counters(true);
      emu::take_counters();
      try {
        call();
      } catch (const Error& e) {
        dir.error = e.what();
      }
      dir.launches = emu::take_counters();
      emu::set_counters(false);
    };
    direction(r.fwd, fwd_align, [&] { be.attention(q, k, v, out, lse, opt); });
    direction(r.bwd, bwd_align,
              [&] { be.attention_backward(q, k, v, out, lse, dout, dq, dk, dv, opt); });
    r.outputs = {values(be, out), values(be, lse), values(be, dq), values(be, dk), values(be, dv)};
    return r;
  };
  auto backend = [&](const char* path) {
    auto [be, why] = make_backend_with(name, "NURI_ATTENTION", path);
    NURI_CHECK(be, why);
    return std::move(be);
  };
  auto expect_zero = [](const Vec& v, const char* what) {
    EXPECT_EQ(v, Vec(v.size(), 0.f)) << what;
  };
  const Run by_nuri = run(*backend("nuri"), 16, 16);
  ASSERT_EQ(by_nuri.fwd.error + by_nuri.bwd.error, "");

  for (const unsigned align : {16u, 128u}) {
    SCOPED_TRACE("auto, swizzled maps " + std::to_string(align) + "-byte aligned");
    const bool refused = align == 128;
    // nuri's kernels, and the sm_90a ones (warm-up and timed) only where the maps were made;
    // nuri's Di pass twice, and twice more for the sm_90a backward where it runs; the same
    // outputs either way.
    testing::internal::CaptureStderr();
    const Run by_auto = run(*backend("auto"), align, align);
    const std::string printed = testing::internal::GetCapturedStderr();
    EXPECT_EQ(printed.find("disagrees"), std::string::npos) << printed;
    EXPECT_EQ(by_auto.fwd.error + by_auto.bwd.error, "");
    EXPECT_EQ(launches_of(by_auto.fwd.launches, "attention_fwd_kernel"), 2);
    EXPECT_EQ(launches_of(by_auto.fwd.launches, "attention_fwd_sm90_kernel"), refused ? 0 : 2);
    EXPECT_EQ(launches_of(by_auto.bwd.launches, "attn_bwd_preprocess"), refused ? 2 : 4);
    EXPECT_EQ(launches_of(by_auto.bwd.launches, "attn_bwd_dkdv_sm90_kernel"), refused ? 0 : 2);
    EXPECT_EQ(launches_of(by_auto.bwd.launches, "attn_bwd_dq_sm90_kernel"), refused ? 0 : 2);
    for (size_t i = 0; i < by_nuri.outputs.size(); ++i) {
      EXPECT_EQ(by_auto.outputs[i], by_nuri.outputs[i]) << "output " << i;
    }
  }

  // NURI_ATTENTION=sm90 with every map made: one launch of each kernel.
  const Run made = run(*backend("sm90"), 16, 16);
  EXPECT_EQ(made.fwd.error + made.bwd.error, "");
  EXPECT_EQ(launches_of(made.fwd.launches, "attention_fwd_sm90_kernel"), 1);
  EXPECT_EQ(launches_of(made.bwd.launches, "attn_bwd_dq_sm90_kernel"), 1);
  // Refused in both directions: each stops naming its first map (the forward's q, the
  // backward's k), launching and writing nothing.
  const Run refused = run(*backend("sm90"), 128, 128);
  for (const char* part : {"attention (NURI_ATTENTION=sm90): the driver refused the tensor map "
                           "of q", "strides 6400, 160, 80 elements", "use auto or nuri"}) {
    EXPECT_NE(refused.fwd.error.find(part), std::string::npos) << part << " in: "
                                                               << refused.fwd.error;
  }
  EXPECT_NE(refused.bwd.error.find("attention_backward (NURI_ATTENTION=sm90): the driver refused "
                                   "the tensor map of k (CUresult 1; address 0 bytes past a "
                                   "128-byte boundary, strides 3200, 80, 80 elements)"),
            std::string::npos)
      << refused.bwd.error;
  EXPECT_TRUE(refused.fwd.launches.empty());
  EXPECT_TRUE(refused.bwd.launches.empty());
  const char* names[5] = {"out", "lse", "dq", "dk", "dv"};
  for (size_t i = 0; i < 5; ++i) expect_zero(refused.outputs[i], names[i]);
  // Refused in the backward only, after a forward that ran.
  const Run bwd_refused = run(*backend("sm90"), 16, 128);
  EXPECT_EQ(bwd_refused.fwd.error, "");
  EXPECT_NE(bwd_refused.bwd.error.find("the tensor map of k"), std::string::npos);
  EXPECT_TRUE(bwd_refused.bwd.launches.empty());
  EXPECT_NE(bwd_refused.outputs[0], Vec(bwd_refused.outputs[0].size(), 0.f));
  for (size_t i = 2; i < 5; ++i) expect_zero(bwd_refused.outputs[i], names[i]);
}

}  // namespace
}  // namespace nuri::test
