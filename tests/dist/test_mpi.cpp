// The communicators between processes: MPI under mpirun with 1, 2 and 4 ranks (ctest label mpi),
// and TCP under a torchrun-style start with 2, 3 and 4 ranks (tests/dist/torchrun.sh, label
// dist). Every rank runs the same tests in the same order, so their collectives meet. Values are chosen so sums are
// exact (small integers, in f32 and bf16), except where bit-identical results across ranks are
// the point.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "nuri/core/error.h"
#include "nuri/core/rng.h"
#include "nuri/dist/communicator.h"
#include "nuri/dist/grid.h"
#include "nuri/dist/launch.h"

namespace nuri {
namespace {

Communicator& world() {
  static std::unique_ptr<Communicator> comm = [] {
    CommOptions opt;
    opt.timeout_s = 60;  // a test that desynchronizes the ranks fails within a minute, not hangs
    return make_communicator(detect_launch(), opt);
  }();
  return *comm;
}

Tensor filled(DType dt, int64_t n, const std::function<float(int64_t)>& f) {
  Tensor t = Tensor::empty({n}, dt);
  for (int64_t i = 0; i < n; ++i) {
    if (dt == DType::f32) {
      t.data<float>()[i] = f(i);
    } else {
      t.data<bf16_t>()[i] = f32_to_bf16(f(i));
    }
  }
  return t;
}

float at(const Tensor& t, int64_t i) {
  return t.dtype() == DType::f32 ? t.data<float>()[i] : bf16_to_f32(t.data<bf16_t>()[i]);
}

class Mpi : public ::testing::TestWithParam<DType> {};

TEST(MpiWorld, MatchesTheLauncher) {
  const LaunchInfo info = detect_launch();
  Communicator& c = world();
  EXPECT_EQ(c.rank(), info.rank);
  EXPECT_EQ(c.size(), info.world_size);
  // mpirun and `srun --mpi=pmix` give MPI; a torchrun-style start (tests/dist/torchrun.sh) and
  // srun with MASTER_ADDR (tests/dist/srun.sh --tcp) the TCP communicator.
  const bool tcp = !info.master_addr.empty();
  EXPECT_EQ(c.backend_name(), info.world_size == 1 ? "single" : tcp ? "tcp" : "mpi");
  if (info.world_size > 1) {
    EXPECT_TRUE(info.launcher != Launcher::single) << launcher_name(info.launcher);
  }
  // NURI_TEST_EXPECT_LAUNCHER (set by the test's command) pins which launcher it was.
  if (const char* want = std::getenv("NURI_TEST_EXPECT_LAUNCHER")) {
    EXPECT_EQ(std::string(launcher_name(info.launcher)), want);
  }
}

// The gradient norm over ranks: norms whose squares overflow f32 (1e20² > 3.4e38) still sum
// to a finite norm, the one a single process (f64 squares) gets.
TEST(MpiNorms, ANormOverRanksSquaresInF64) {
  Communicator& c = world();
  const int p = c.size();
  const double each = 1e20 * double(c.rank() + 1);
  double want = 0;
  for (int r = 0; r < p; ++r) {
    const double sent = double(float(1e20 * (r + 1)));  // what each rank's norm is as an f32
    want += sent * sent;
  }
  const double got = norm_over_ranks(c, each);
  EXPECT_TRUE(std::isfinite(got));
  EXPECT_EQ(got, std::sqrt(want));
}

TEST_P(Mpi, AllReduceSumsAndAverages) {
  Communicator& c = world();
  const int r = c.rank(), p = c.size();
  const int64_t n = 1000;  // several MPI chunks' worth of 2-byte elements too
  // (r + 1) · (i % 8): sums stay small integers, exact in bf16.
  Tensor t = filled(GetParam(), n, [&](int64_t i) { return float((r + 1) * (i % 8)); });
  c.all_reduce(t);
  const float ranks_sum = float(p * (p + 1) / 2);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(at(t, i), ranks_sum * float(i % 8)) << i;
  Tensor a = filled(GetParam(), n, [&](int64_t i) { return float(p * (i % 8)); });
  c.all_reduce(a, ReduceOp::avg);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(at(a, i), float(p * (i % 8))) << i;
}

TEST_P(Mpi, EveryRankGetsTheSameBits) {
  Communicator& c = world();
  const int64_t n = 4099;
  Philox rng(77, stream_id("test/mpi"));
  Tensor t = filled(GetParam(), n, [&](int64_t i) {
    return rng.normal(uint64_t(c.rank()) * uint64_t(n) + uint64_t(i));
  });
  c.all_reduce(t);
  Tensor all = Tensor::empty({n * c.size()}, GetParam());
  c.all_gather(t, all);
  const size_t bytes = t.nbytes();
  for (int q = 0; q < c.size(); ++q) {
    EXPECT_EQ(std::memcmp(static_cast<const char*>(all.raw()) + size_t(q) * bytes, t.raw(), bytes),
              0)
        << "rank " << q << "'s all_reduce result differs from rank " << c.rank() << "'s";
  }
}

TEST_P(Mpi, ReduceScatterAndAllGatherAreInverses) {
  Communicator& c = world();
  const int r = c.rank(), p = c.size();
  const int64_t n = 37;  // per rank
  Tensor in = filled(GetParam(), n * p, [&](int64_t i) { return float(r + i % 16); });
  Tensor mine = Tensor::empty({n}, GetParam());
  c.reduce_scatter(in, mine);
  // chunk r holds global indices [r·n, (r+1)·n): Σ_q (q + i % 16)
  for (int64_t j = 0; j < n; ++j) {
    const int64_t i = r * n + j;
    ASSERT_EQ(at(mine, j), float(p * (p - 1) / 2 + p * (i % 16))) << j;
  }
  Tensor whole = Tensor::empty({n * p}, GetParam());
  c.all_gather(mine, whole);
  for (int64_t i = 0; i < n * p; ++i) ASSERT_EQ(at(whole, i), float(p * (p - 1) / 2 + p * (i % 16)));
  Tensor avg = Tensor::empty({n}, GetParam());
  c.reduce_scatter(in, avg, ReduceOp::avg);
  for (int64_t j = 0; j < n; ++j)
    ASSERT_EQ(at(avg, j), at(mine, j) / float(p)) << "p = " << p << " divides these sums exactly";
}

// ZeRO 2's bucket reduction: each rank receives the sum of its piece of a bucket, pieces of
// uneven length, some empty (ranks whose shard misses the bucket).
TEST_P(Mpi, ReduceScatterVWithUnevenAndEmptyChunks) {
  Communicator& c = world();
  const int r = c.rank(), p = c.size();
  std::vector<int64_t> counts;
  int64_t total = 0, mine_at = 0;
  for (int q = 0; q < p; ++q) {
    if (q == r) mine_at = total;
    counts.push_back(q % 2 == 1 ? 0 : 5 * q + 2);  // 2, 0, 12, 0
    total += counts.back();
  }
  Tensor in = filled(GetParam(), total, [&](int64_t i) { return float(r + i % 16); });
  Tensor mine = filled(GetParam(), counts[size_t(r)], [](int64_t) { return -1.f; });
  c.reduce_scatter_v(in, mine, counts);
  for (int64_t j = 0; j < counts[size_t(r)]; ++j) {
    ASSERT_EQ(at(mine, j), float(p * (p - 1) / 2 + p * ((mine_at + j) % 16))) << j;
  }
  Tensor avg = Tensor::empty({counts[size_t(r)]}, GetParam());
  c.reduce_scatter_v(in, avg, counts, ReduceOp::avg);
  for (int64_t j = 0; j < counts[size_t(r)]; ++j) ASSERT_EQ(at(avg, j), at(mine, j) / float(p));
  auto msg = [](const std::function<void()>& f) {
    try {
      f();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  Tensor big = filled(GetParam(), total + 1, [](int64_t) { return 0.f; });
  EXPECT_NE(msg([&] {
              c.reduce_scatter_v(big.slice(0, 0, total), big.slice(0, 1, 1 + counts[size_t(r)]),
                                 counts);
            }).find("out overlaps in"),
            std::string::npos);
  // In place: the result lands in in's first elements.
  c.reduce_scatter_v(in, in.slice(0, 0, counts[size_t(r)]), counts);
  for (int64_t j = 0; j < counts[size_t(r)]; ++j) ASSERT_EQ(at(in, j), at(mine, j)) << j;
  std::vector<int64_t> wrong = counts;
  wrong[0] += 1;
  EXPECT_NE(msg([&] { c.reduce_scatter_v(in, mine, wrong); }).find("counts add up to"),
            std::string::npos);
}

TEST_P(Mpi, AllGatherVWithUnevenChunksInPlaceAndNot) {
  Communicator& c = world();
  const int r = c.rank(), p = c.size();
  std::vector<int64_t> counts;
  int64_t total = 0, mine_at = 0;
  for (int q = 0; q < p; ++q) {
    if (q == r) mine_at = total;
    counts.push_back(3 * q + 1);  // 1, 4, 7, 10: the shards of an uneven buffer
    total += counts.back();
  }
  auto expected = [&](int64_t i) {  // element i of the whole buffer, written by its owner
    int q = 0;
    int64_t at = 0;
    while (i >= at + counts[size_t(q)]) at += counts[size_t(q++)];
    return float(10 * q + (i - at));
  };
  Tensor whole = filled(GetParam(), total, [&](int64_t) { return -1.f; });
  for (int64_t j = 0; j < counts[size_t(r)]; ++j) {
    Tensor one = whole.slice(0, mine_at + j, mine_at + j + 1);
    if (GetParam() == DType::f32) {
      one.data<float>()[0] = float(10 * r + j);
    } else {
      one.data<bf16_t>()[0] = f32_to_bf16(float(10 * r + j));
    }
  }
  c.all_gather_v(whole.slice(0, mine_at, mine_at + counts[size_t(r)]), whole, counts);  // in place
  for (int64_t i = 0; i < total; ++i) ASSERT_EQ(at(whole, i), expected(i)) << i;
  Tensor mine =
      filled(GetParam(), counts[size_t(r)], [&](int64_t j) { return float(10 * r + j); });
  Tensor out = filled(GetParam(), total, [&](int64_t) { return -1.f; });
  c.all_gather_v(mine, out, counts);
  for (int64_t i = 0; i < total; ++i) ASSERT_EQ(at(out, i), expected(i)) << i;
}

TEST_P(Mpi, BroadcastFromTheLastRank) {
  Communicator& c = world();
  const int root = c.size() - 1;
  Tensor t = filled(GetParam(), 100, [&](int64_t i) { return float(c.rank() == root ? i : -1); });
  c.broadcast(t, root);
  for (int64_t i = 0; i < 100; ++i) ASSERT_EQ(at(t, i), float(i));
}

TEST_P(Mpi, SendAndReceiveAroundARing) {
  Communicator& c = world();
  if (c.size() == 1) GTEST_SKIP() << "no peer in a one-rank job";
  const int r = c.rank(), p = c.size();
  const int next = (r + 1) % p, prev = (r + p - 1) % p;
  const int64_t n = 300000;  // beyond eager sizes: a send completes only once it is received
  Tensor out = filled(GetParam(), n, [&](int64_t i) { return float(r * 10 + i % 7); });
  Tensor in = Tensor::empty({n}, GetParam());
  if (r % 2 == 0) {
    c.send(out, next);
    c.recv(in, prev);
  } else {
    c.recv(in, prev);
    c.send(out, next);
  }
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(at(in, i), float(prev * 10 + i % 7)) << i;
}

TEST(MpiGroups, GridGroupsReduceAmongTheirMembers) {
  Communicator& c = world();
  const int p = c.size();
  const ProcessGrid grid(p, p >= 4 ? 2 : p, p >= 4 ? p / 2 : 1);  // 4 ranks: dp 2 × tp 2
  for (auto group_of : {&ProcessGrid::dp_group, &ProcessGrid::tp_group}) {
    const std::vector<int> members = (grid.*group_of)(c.rank());
    std::unique_ptr<Communicator> g = c.split(members);
    ASSERT_EQ(g->size(), int(members.size()));
    EXPECT_EQ(members[size_t(g->rank())], c.rank());
    Tensor t = filled(DType::f32, 3, [&](int64_t i) { return float(c.rank() + 100 * i); });
    g->all_reduce(t);
    float expect = 0;
    for (int m : members) expect += float(m);
    for (int64_t i = 0; i < 3; ++i)
      EXPECT_EQ(at(t, i), expect + float(100 * i * int64_t(members.size())));
  }
  c.barrier();
}

TEST(MpiErrors, BadArgumentsAreNamedBeforeAnythingMoves) {
  Communicator& c = world();
  auto msg = [](const std::function<void()>& f) -> std::string {
    try {
      f();
    } catch (const Error& e) {
      return e.what();
    }
    return "(no error)";
  };
  const Tensor ints = Tensor::empty({4}, DType::i32);
  EXPECT_NE(msg([&] { c.all_reduce(ints); }).find("all_reduce: t is i32"), std::string::npos);
  const Tensor a = Tensor::empty({6}, DType::f32), b = Tensor::empty({5}, DType::f32);
  EXPECT_NE(msg([&] { c.all_gather(a, b); }).find("all_gather: in has 6 elements and out 5"),
            std::string::npos);
  EXPECT_NE(msg([&] { c.send(a, c.rank()); }).find("is not another rank"), std::string::npos);
  EXPECT_NE(msg([&] { c.broadcast(a, c.size()); }).find("broadcast: root"), std::string::npos);
  const Tensor bf = Tensor::empty({6}, DType::bf16);
  EXPECT_NE(msg([&] { c.reduce_scatter(bf, a); }).find("in is bf16 but out is f32"),
            std::string::npos);
  EXPECT_NE(msg([&] { c.all_gather_v(a, a, std::vector<int64_t>(size_t(c.size()) + 1, 6)); })
                .find("counts for"),
            std::string::npos);
  c.barrier();  // the ranks leave together: none of the above moved anything
}

INSTANTIATE_TEST_SUITE_P(Dtypes, Mpi, ::testing::Values(DType::f32, DType::bf16),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

}  // namespace
}  // namespace nuri
