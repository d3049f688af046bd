// Bad input to ops raises nuri::Error naming the op and the offending values; nothing crashes.
#include <string>

#include "ops/harness.h"

namespace nuri::test {
namespace {

// Runs f, expects nuri::Error whose message contains every one of `parts`.
template <typename F>
void expect_error(F&& f, std::initializer_list<std::string> parts) {
  try {
    f();
    ADD_FAILURE() << "no error raised; expected one mentioning '" << *parts.begin() << "'";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "message: " << msg;
  }
}

class OpErrorTest : public ::testing::TestWithParam<std::string> {
 protected:
  std::unique_ptr<Backend> be = make_backend(GetParam());
  /// An activation (f32 on the CPU, bf16 on CUDA backends).
  Tensor act(const Shape& s) { return zeros(*be, s); }
  /// An f32 tensor (statistics, parameter gradients, optimizer state).
  Tensor f32(const Shape& s) { return zeros_f32(*be, s); }
  bool cpu() const { return be->device().is_cpu(); }
};

TEST_P(OpErrorTest, MatmulShapeMismatch) {
  expect_error([&] { be->matmul(f32({4, 5}), f32({3, 6}), Tensor(), f32({4, 3}), Activation::none, Tensor(), Tensor()); },
               {"matmul", "(4, 5)", "(3, 6)", "6"});
  expect_error([&] { be->matmul(f32({4, 5}), f32({3, 5}), f32({4}), f32({4, 3}), Activation::none, Tensor(), Tensor()); },
               {"matmul", "bias", "(4,)", "(3,)"});
  expect_error([&] { be->matmul(f32({4, 5}), f32({3, 5}), Tensor(), f32({4, 3}), Activation::gelu, Tensor(), Tensor()); },
               {"matmul", "pre", "required"});
  expect_error([&] { be->matmul(f32({4, 5}), f32({3, 5}), Tensor(), f32({4, 3}), Activation::none, Tensor(), f32({4, 4})); },
               {"matmul", "residual", "(4, 4)"});
  expect_error([&] { be->matmul_backward_weight(f32({4, 3}), f32({5, 5}), f32({3, 5}), false); },
               {"matmul_backward_weight", "x", "(5, 5)"});
  expect_error([&] { be->matmul_backward_input(f32({4, 3}), f32({3, 5}), f32({4, 5}), true, f32({4, 5})); },
               {"cannot accumulate"});
}

// The backends whose products launch a grid: the CUDA ones, real or emulated (the CPU's call BLAS).
class GridOpErrorTest : public OpErrorTest {};
std::vector<std::string> grid_backends() {
  std::vector<std::string> r;
  for (const auto& name : backends()) {
    if (name.rfind("cuda", 0) == 0) r.push_back(name);
  }
  return r;
}

// A product of more rows than a launch's grid.y holds row tiles of (65535 tiles of at most 128
// rows) is refused before its launch, with the largest row chunk that would run.
TEST_P(GridOpErrorTest, MatmulWithMoreRowTilesThanALaunchHolds) {
  const int64_t rows = int64_t(65535) * 128 + 1;  // one tile too many for the largest tiles
  expect_error([&] {
                 be->matmul(act({rows, 1}), act({1, 1}), Tensor(), act({rows, 1}),
                            Activation::none, Tensor(), Tensor());
               },
               {"matmul kernel: 8388481 rows make", "more than the 65535 a launch's grid.y holds",
                "split the product into row chunks of at most"});
}

TEST_P(OpErrorTest, EmptyDimensionsAreRefusedOrEmptyNotDividedBy) {
  // An inner dimension of 0 is refused by name; a last dimension of 0 elsewhere has rows to
  // count (it divided by zero) and nothing to do.
  expect_error([&] { be->matmul(act({4, 0}), act({3, 0}), Tensor(), act({4, 3}), Activation::none, Tensor(), Tensor()); },
               {"matmul", "(3, 0)", "inner dimension K of 0"});
  const Tensor dbias = f32({0});
  be->matmul_backward_bias(act({4, 0}), dbias, false);
  expect_error([&] { be->matmul_backward_bias(act({4, 0}), f32({1}), false); },
               {"matmul_backward_bias", "dy", "(4, 0)", "4 rows of 1 columns"});
  if (cpu()) {  // dx = dy · w with N = 0 is zero (BLAS refuses the 0 leading dimension)
    Tensor dx = Tensor::empty({4, 5}, DType::f32);
    for (int64_t i = 0; i < dx.numel(); ++i) dx.data<float>()[i] = 7.f;
    be->matmul_backward_input(f32({4, 0}), f32({0, 5}), dx, false, Tensor());
    for (int64_t i = 0; i < dx.numel(); ++i) ASSERT_EQ(dx.data<float>()[i], 0.f) << i;
  }
}

TEST_P(OpErrorTest, DtypeAndDeviceMismatch) {
  Tensor i32 = on_i32(*be, {4, 5}, std::vector<int32_t>(20, 0));
  if (cpu()) {
    expect_error([&] { be->gelu(i32, act({4, 5})); }, {"gelu", "dtype i32", "expected f32"});
    float host[20] = {};
    Tensor on_gpu = Tensor::from_blob(host, {4, 5}, DType::f32, Device::cuda(0));
    expect_error([&] { be->gelu(on_gpu, act({4, 5})); }, {"gelu", "cuda:0", "CPU tensors"});
  } else {
    expect_error([&] { be->gelu(i32, act({4, 5})); }, {"gelu", "dtype i32", "bf16 or f32"});
    Tensor host = Tensor::zeros({4, 5}, DType::bf16);
    expect_error([&] { be->gelu(host, act({4, 5})); }, {"gelu", "is on cpu", "CUDA tensors"});
    // Activations of one call share one dtype; parameter gradients are always f32.
    expect_error([&] { be->gelu(act({4, 5}), f32({4, 5})); }, {"gelu", "dtype f32", "expected bf16"});
    AdamWTensor bf{act({3}), f32({3}), f32({3}), f32({3}), true};
    expect_error([&] { be->adamw({bf}, AdamWParams{}); }, {"adamw", "param", "dtype bf16", "f32"});
  }
  Tensor tokens_f32 = f32({2, 3});
  expect_error([&] { be->embedding(tokens_f32, act({10, 4}), Tensor(), Tensor(), act({2, 3, 4})); },
               {"embedding", "tokens", "dtype f32", "expected i32"});
}

TEST_P(OpErrorTest, NonContiguousWhereContiguityIsRequired) {
  Tensor wide = act({4, 10});
  expect_error([&] { be->gelu(wide.slice(1, 0, 5), act({4, 5})); }, {"gelu", "contiguous"});
}

TEST_P(OpErrorTest, AttentionHeadsAndShapes) {
  AttentionOptions opt;
  expect_error([&] { be->attention(act({1, 4, 8, 2}), act({1, 4, 3, 2}), act({1, 4, 3, 2}), act({1, 4, 8, 2}), f32({1, 8, 4}), opt); },
               {"attention", "3", "8", "divide"});
  expect_error([&] { be->attention(act({1, 4, 2, 2}), act({1, 5, 2, 2}), act({1, 5, 2, 2}), act({1, 4, 2, 2}), f32({1, 2, 4}), opt); },
               {"attention", "k has shape"});
  expect_error([&] { be->attention(act({1, 0, 2, 2}), act({1, 0, 2, 2}), act({1, 0, 2, 2}), act({1, 0, 2, 2}), f32({1, 2, 0}), opt); },
               {"attention", "must be positive"});
}

TEST_P(OpErrorTest, TokensAndTargetsOutOfRange) {
  Tensor tok = on_i32(*be, {1, 3}, {1, 10, 2});
  expect_error([&] { be->embedding(tok, act({10, 4}), Tensor(), Tensor(), act({1, 3, 4})); },
               {"embedding", "token id 10", "position 1", "[0, 10)"});
  Tensor neg = on_i32(*be, {1, 3}, {1, -1, 2});
  expect_error([&] { be->embedding_backward(neg, act({1, 3, 4}), f32({10, 4}), Tensor(), Tensor(), false); },
               {"embedding_backward", "token id -1"});
  expect_error([&] { be->embedding(on_i32(*be, {1, 5}, {0, 1, 2, 3, 4}), act({10, 4}), act({4, 4}), Tensor(), act({1, 5, 4})); },
               {"sequence length 5", "max_seq_len 4"});
  // Positions (packed documents) index the position table: each in [0, Tmax), [B, T], with wpe.
  Tensor tok3 = on_i32(*be, {1, 3}, {1, 2, 3});
  expect_error([&] { be->embedding(tok3, act({10, 4}), act({4, 4}), on_i32(*be, {1, 3}, {0, 4, 1}), act({1, 3, 4})); },
               {"embedding", "position id 4 at batch 0, position 1", "position table [0, 4)"});
  expect_error([&] { be->embedding_backward(tok3, act({1, 3, 4}), f32({10, 4}), f32({4, 4}), on_i32(*be, {1, 3}, {0, 1, -1}), false); },
               {"embedding_backward", "position id -1 at batch 0, position 2", "[0, 4)"});
  expect_error([&] { be->embedding(tok3, act({10, 4}), Tensor(), on_i32(*be, {1, 3}, {0, 1, 2}), act({1, 3, 4})); },
               {"embedding", "positions are given without a position table"});
  expect_error([&] { be->embedding_shard(tok3, act({10, 4}), act({4, 4}), on_i32(*be, {3}, {0, 1, 2}), act({1, 3, 4}), 0, 10); },
               {"embedding_shard", "positions has shape (3,)", "(1, 3)"});
  Tensor tg = on_i32(*be, {2}, {3, 7});
  expect_error([&] { be->cross_entropy(act({2, 8}), tg, 5, -100, f32({2}), f32({2}), f32({1})); },
               {"cross_entropy", "target 7", "row 1", "[0, 5)"});
  expect_error([&] { be->cross_entropy(act({2, 8}), on_i32(*be, {2}, {0, 0}), 9, -100, f32({2}), f32({2}), f32({1})); },
               {"vocab_size 9", "[1, 8]"});
}

TEST_P(OpErrorTest, VocabularyShardArguments) {
  // embedding_shard: tokens are checked against the whole vocabulary, not the shard's rows.
  Tensor tok = on_i32(*be, {1, 3}, {1, 10, 2});
  expect_error([&] { be->embedding_shard(tok, act({4, 4}), Tensor(), Tensor(), act({1, 3, 4}), 8, 10); },
               {"embedding_shard", "token id 10", "position 1", "[0, 10)"});
  Tensor neg = on_i32(*be, {1, 3}, {1, -1, 2});
  expect_error([&] { be->embedding_shard_backward(neg, act({1, 3, 4}), f32({4, 4}), Tensor(), Tensor(), 0, 10, false); },
               {"embedding_shard_backward", "token id -1", "[0, 10)"});
  Tensor ok = on_i32(*be, {1, 3}, {1, 9, 2});
  expect_error([&] { be->embedding_shard(ok, act({4, 4}), Tensor(), Tensor(), act({1, 3, 4}), -4, 10); },
               {"embedding_shard", "row_lo (-4)", ">= 0"});
  expect_error([&] { be->embedding_shard(ok, act({4, 4}), Tensor(), Tensor(), act({1, 3, 5}), 4, 10); },
               {"embedding_shard", "out", "(1, 3, 5)", "(1, 3, 4)"});
  expect_error([&] { be->embedding_shard_backward(ok, act({1, 3, 4}), f32({4, 4}), f32({2, 4}), Tensor(), 4, 10, false); },
               {"embedding_shard_backward", "sequence length 3", "max_seq_len 2"});

  // cross_entropy_shard / _backward: targets against the whole vocabulary, 0 <= col_lo < vocab.
  Tensor tg = on_i32(*be, {2}, {3, 7});
  expect_error([&] { be->cross_entropy_shard(act({2, 4}), tg, 5, -100, 4, f32({2}), f32({2})); },
               {"cross_entropy_shard", "target 7", "row 1", "[0, 5)"});
  expect_error([&] { be->cross_entropy_shard_backward(act({2, 4}), tg, f32({2}), 5, -100, 0, 1.f, act({2, 4})); },
               {"cross_entropy_shard_backward", "target 7", "row 1", "[0, 5)"});
  Tensor tg_ok = on_i32(*be, {2}, {3, -100});
  expect_error([&] { be->cross_entropy_shard(act({2, 4}), tg_ok, 5, -100, -1, f32({2}), f32({2})); },
               {"cross_entropy_shard", "col_lo (-1)", "[0, vocab_size = 5)"});
  expect_error([&] { be->cross_entropy_shard_backward(act({2, 4}), tg_ok, f32({2}), 5, -100, 5, 1.f, act({2, 4})); },
               {"cross_entropy_shard_backward", "col_lo (5)", "[0, vocab_size = 5)"});
  expect_error([&] { be->cross_entropy_shard(act({2, 4}), tg_ok, 5, -100, 4, f32({3}), f32({2})); },
               {"cross_entropy_shard", "losses", "(3,)", "(2,)"});
  expect_error([&] { be->cross_entropy_shard(act({2, 4}), on_i32(*be, {3}, {0, 1, 2}), 5, -100, 0, f32({2}), f32({2})); },
               {"cross_entropy_shard", "targets", "(3,)", "(2,)"});
  expect_error([&] { be->cross_entropy_shard_backward(act({2, 4}), tg_ok, f32({2}), 5, -100, 0, 1.f, act({2, 5})); },
               {"cross_entropy_shard_backward", "dlogits", "(2, 5)", "(2, 4)"});

  // cross_entropy_merge: part_lse and part_losses [S, N] of one shape, N rows everywhere.
  expect_error([&] { be->cross_entropy_merge(f32({2, 2}), f32({2, 3}), tg_ok, -100, f32({2}), f32({2}), f32({1})); },
               {"cross_entropy_merge", "part_losses", "(2, 3)", "(2, 2)"});
  expect_error([&] { be->cross_entropy_merge(f32({2}), f32({2}), tg_ok, -100, f32({2}), f32({2}), f32({1})); },
               {"cross_entropy_merge", "part_lse", "[S, N]", "(2,)"});
  expect_error([&] { be->cross_entropy_merge(f32({2, 3}), f32({2, 3}), tg_ok, -100, f32({3}), f32({3}), f32({1})); },
               {"cross_entropy_merge", "targets", "(2,)", "(3,)"});
  expect_error([&] { be->cross_entropy_merge(f32({2, 2}), f32({2, 2}), tg_ok, -100, f32({2}), f32({2}), f32({2})); },
               {"cross_entropy_merge", "loss", "(2,)", "(1,)"});
  expect_error([&] { be->cross_entropy_merge(f32({2, 2}), f32({2, 2}), on_i32(*be, {2}, {3, -7}), -100, f32({2}), f32({2}), f32({1})); },
               {"cross_entropy_merge", "target -7", "row 1", "negative", "ignore_index (-100)"});
}

TEST_P(OpErrorTest, NormAndRopeArguments) {
  expect_error([&] { be->layernorm(act({3, 8}), Tensor(), act({7}), Tensor(), 1e-5f, Tensor(), act({3, 8}), f32({3}), f32({3})); },
               {"layernorm", "weight", "(7,)", "(8,)"});
  expect_error([&] { be->rmsnorm(act({0, 8}), Tensor(), act({8}), 1e-5f, Tensor(), act({0, 8}), f32({0})); },
               {"rmsnorm", "empty"});
  expect_error([&] { be->layernorm(act({3, 8}), Tensor(), act({8}), Tensor(), 0.f, Tensor(), act({3, 8}), f32({3}), f32({3})); },
               {"eps must be positive"});
  expect_error([&] { be->rope(act({1, 2, 2, 5}), act({1, 2, 2, 5}), Rope{}, 0); },
               {"rope", "even", "5"});
  Rope llama3;
  llama3.scaling = RopeScalingKind::llama3;
  llama3.factor = 8;
  llama3.low_freq_factor = 4;
  llama3.high_freq_factor = 1;
  expect_error([&] { be->rope(act({1, 2, 2, 4}), act({1, 2, 2, 4}), llama3, 0); },
               {"rope", "low_freq_factor < high_freq_factor", "4", "1"});
  Rope linear;
  linear.scaling = RopeScalingKind::linear;
  linear.factor = 0;
  expect_error([&] { be->rope_backward(act({1, 2, 2, 4}), act({1, 2, 2, 4}), linear, 0); },
               {"rope_backward", "scaling factor must be positive", "0"});
  expect_error([&] { be->swiglu(act({2, 5}), act({2, 2})); }, {"swiglu", "even"});
}

TEST_P(OpErrorTest, OptimizerArguments) {
  AdamWParams hp;
  hp.step = 0;
  AdamWTensor t{f32({3}), f32({3}), f32({3}), f32({3}), true};
  expect_error([&] { be->adamw({t}, hp); }, {"adamw", "1-based", "0"});
  hp.step = 1;
  AdamWTensor bad{f32({3}), f32({4}), f32({3}), f32({3}), true};
  expect_error([&] { be->adamw({bad}, hp); }, {"adamw", "grad", "(4,)", "(3,)"});
}

TEST(BackendRegistry, UnknownBackendListsTheAvailableOnes) {
  expect_error([] { make_backend("tpu"); }, {"unknown backend 'tpu'", "cpu"});
}

TEST(BackendRegistry, ACudaBackendTakesADeviceIndex) {
  expect_error([] { make_backend("cuda:one"); }, {"cuda:one", "must be a number", "cuda:1"});
  expect_error([] { make_backend("cuda:"); }, {"must be a number"});
  expect_error([] { make_backend("cpu:1"); }, {"unknown backend 'cpu:1'"});
#if NURI_CUDA_EMULATION
  // The emulator has one device: index 0 is it, 1 is named as missing.
  EXPECT_EQ(make_backend("cuda-emu:0")->device().index, 0);
  expect_error([] { make_backend("cuda-emu:1"); }, {"CUDA device 1 does not exist", "1 present"});
#endif
}

INSTANTIATE_TEST_SUITE_P(Ops, OpErrorTest, ::testing::ValuesIn(backends()),
                         [](const auto& info) { return sanitize_name(info.param); });
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(GridOpErrorTest);
INSTANTIATE_TEST_SUITE_P(Ops, GridOpErrorTest, ::testing::ValuesIn(grid_backends()),
                         [](const auto& info) { return sanitize_name(info.param); });

}  // namespace
}  // namespace nuri::test
