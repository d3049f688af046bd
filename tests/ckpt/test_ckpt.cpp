// Checkpoints (issue #10), label ckpt: safetensors files and their validation, the checkpoint
// directory's commit and retention, exact resume on the CPU backend, and every validation error
// of loading (each must name the file and the tensor or field).
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "nuri/ckpt/checkpoint.h"
#include "nuri/ckpt/consolidate.h"
#include "nuri/ckpt/safetensors.h"
#include "nuri/core/error.h"
#include "nuri/train/trainer.h"

namespace nuri {
namespace {

namespace fs = std::filesystem;

std::string tmpdir(const std::string& name) {
  const std::string d = fs::temp_directory_path().string() + "/nuri_ckpt_" + name + "_" +
                        std::to_string(::getpid());
  // Removed at the process's exit too, whatever the test left there.
  static struct Scratch {
    std::vector<std::string> dirs;
    ~Scratch() {
      std::error_code ec;
      for (const std::string& dir : dirs) fs::remove_all(dir, ec);
    }
  } scratch;
  scratch.dirs.push_back(d);
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

#define EXPECT_ERROR(stmt, ...)                                                    \
  do {                                                                             \
    const std::string msg_ = error_of([&] { stmt; });                              \
    for (const char* part_ : {__VA_ARGS__}) {                                      \
      EXPECT_NE(msg_.find(part_), std::string::npos) << "'" << part_ << "' not in: " << msg_; \
    }                                                                              \
  } while (0)

Tensor iota(DType dt, Shape shape, float start) {
  Tensor t = Tensor::empty(shape, dt);
  for (int64_t i = 0; i < t.numel(); ++i) {
    const float v = start + float(i) * 0.5f;
    if (dt == DType::f32) t.data<float>()[i] = v;
    else if (dt == DType::bf16) t.data<bf16_t>()[i] = f32_to_bf16(v);
    else if (dt == DType::i32) t.data<int32_t>()[i] = int32_t(i) - 3;
  }
  return t;
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary).write(bytes.data(), std::streamsize(bytes.size()));
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

/// A safetensors file with a hand-written header.
std::string with_header(const std::string& header, size_t data_bytes) {
  std::string s(8, '\0');
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) s[size_t(i)] = char((n >> (8 * i)) & 0xff);
  return s + header + std::string(data_bytes, '\x01');
}

TEST(Safetensors, RoundTripKeepsDtypesShapesAndMetadata) {
  const std::string d = tmpdir("st");
  const Tensor a = iota(DType::f32, {3, 5}, 1), b = iota(DType::bf16, {7}, -2),
               c = iota(DType::i32, {2, 2, 2}, 0);
  const std::string sha =
      write_safetensors(d + "/x.safetensors", {{"a", a}, {"b.weight", b}, {"c", c}}, {{"k", "v"}});
  EXPECT_EQ(sha, sha256_file(d + "/x.safetensors"));
  EXPECT_EQ(sha.size(), 64u);
  SafetensorsFile f(d + "/x.safetensors");
  EXPECT_EQ(f.names(), (std::vector<std::string>{"a", "b.weight", "c"}));
  EXPECT_EQ(f.metadata().at("k"), "v");
  EXPECT_EQ(f.entry("b.weight").dtype, DType::bf16);
  EXPECT_EQ(f.entry("c").shape, (Shape{2, 2, 2}));
  Tensor a2 = Tensor::empty({3, 5}, DType::f32), b2 = Tensor::empty({7}, DType::f32),
         c2 = Tensor::empty({8}, DType::i32);
  f.read("a", a2);
  f.read("b.weight", b2);  // bf16 read as f32
  f.read("c", c2);
  EXPECT_EQ(std::memcmp(a.raw(), a2.raw(), a.nbytes()), 0);
  for (int i = 0; i < 7; ++i) EXPECT_EQ(b2.data<float>()[i], bf16_to_f32(b.data<bf16_t>()[i]));
  EXPECT_EQ(std::memcmp(c.raw(), c2.raw(), c.nbytes()), 0);
  Tensor part = Tensor::empty({4}, DType::f32);
  f.read_range("a", 6, 10, part);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(part.data<float>()[i], a.data<float>()[6 + i]);
  // The file stays open between reads (a copy shares it): removed from its directory, it is
  // still read; closed, the next read says it cannot open it and why that may be.
  const SafetensorsFile copy = f;
  fs::remove(d + "/x.safetensors");
  copy.read_range("a", 0, 4, part);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(part.data<float>()[i], a.data<float>()[i]);
  f.close();
  EXPECT_ERROR(f.read_range("a", 0, 4, part), "x.safetensors: cannot open",
               "moved or deleted since it was read");
  fs::remove_all(d);
}

// A model file's tensor checksum (kTensorsChecksumKey): the value python/nuri/io.py's
// tensors_sha256 computes for the same tensors (1754e86e…, from NumPy and hashlib), written into
// the header after the tensors; a writer asked for it refuses tensors out of name order and
// types NumPy lacks.
TEST(Safetensors, AModelFilesTensorChecksumIsPythonsAndNeedsNameOrder) {
  const std::string d = tmpdir("sum");
  const Tensor a = iota(DType::f32, {2, 3}, 1), c = iota(DType::i32, {4}, 0);
  SafetensorsStreamWriter w(d + "/m.safetensors",
                            {{"a", DType::f32, {2, 3}}, {"c", DType::i32, {4}}}, {{"k", "v"}},
                            /*checksum=*/true);
  w.write("a", a);
  w.write("c", c);
  const std::string sum = w.close();
  EXPECT_EQ(sum, "1754e86e59c79fb996dc4716ffdfe20f25e036f7757e1b126decfbc50d95eb22");
  SafetensorsFile f(d + "/m.safetensors");
  EXPECT_EQ(f.metadata().at(kTensorsChecksumKey), sum);
  EXPECT_EQ(f.metadata().at("k"), "v");
  Tensor a2 = Tensor::empty({2, 3}, DType::f32);
  f.read("a", a2);
  EXPECT_EQ(std::memcmp(a.raw(), a2.raw(), a.nbytes()), 0);
  EXPECT_ERROR(SafetensorsStreamWriter(d + "/x.safetensors",
                                       {{"c", DType::f32, {1}}, {"a", DType::f32, {1}}}, {}, true),
               "x.safetensors: a checksummed file's tensors are written in name order, and 'a' "
               "comes after 'c'");
  EXPECT_ERROR(SafetensorsStreamWriter(d + "/y.safetensors", {{"b", DType::bf16, {1}}}, {}, true),
               "tensor 'b' is bf16, which the tensor checksum does not cover");
}

TEST(Safetensors, EveryMalformedFileIsAnErrorNamingFileAndTensor) {
  const std::string d = tmpdir("bad");
  const std::string p = d + "/bad.safetensors";
  write_bytes(p, "abc");
  EXPECT_ERROR(SafetensorsFile f(p), "bad.safetensors", "too short");
  write_bytes(p, with_header("{}", 0).substr(0, 8) + "{");  // claims 2 header bytes, has 1
  EXPECT_ERROR(SafetensorsFile f(p), "bad.safetensors", "header claims");
  write_bytes(p, with_header("{\"a\": [1,", 4));
  EXPECT_ERROR(SafetensorsFile f(p), "bad.safetensors", "not valid JSON");
  // A shape nested a million deep: refused as it parses (its message dumped it, recursing a
  // million levels down the stack).
  write_bytes(p, with_header(R"({"w": {"dtype": "F32", "shape": )" + std::string(1000000, '[') +
                                 std::string(1000000, ']') + R"(, "data_offsets": [0, 4]}})",
                             4));
  EXPECT_ERROR(SafetensorsFile f(p), "bad.safetensors", "nested more than 64 levels deep");
  write_bytes(p, with_header(R"({"w": {"dtype": "Q8", "shape": [1], "data_offsets": [0, 1]}})", 1));
  EXPECT_ERROR(SafetensorsFile f(p), "bad.safetensors", "'w'", "Q8");
  write_bytes(p, with_header(R"({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})", 8));
  EXPECT_ERROR(SafetensorsFile f(p), "'w'", "needs 12 bytes");
  write_bytes(p, with_header(R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", 12));
  EXPECT_ERROR(SafetensorsFile f(p), "'w'", "outside", "truncated");
  write_bytes(p, with_header(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},)"
                             R"( "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                             12));
  EXPECT_ERROR(SafetensorsFile f(p), "'b'", "overlaps");
  write_bytes(p, with_header(R"({"w": {"dtype": "F32", "shape": [2]}})", 8));
  EXPECT_ERROR(SafetensorsFile f(p), "'w'", "data_offsets");
  fs::remove_all(d);
}

// ---- training checkpoints -------------------------------------------------------------------------

std::shared_ptr<TokenFile> text_data() {
  std::string text;
  for (int i = 0; i < 300; ++i) text += "a stitch in time saves nine; " + std::to_string(i % 13);
  return TokenFile::from_tokens(ByteTokenizer().encode(text), "proverb", 257);
}

TrainConfig config(int64_t accum = 1) {
  TrainConfig c;
  c.steps = 10;
  c.micro_batch = 2;
  c.seq_len = 32;
  c.grad_accum = accum;
  c.lr = 3e-3f;
  c.warmup_steps = 2;
  c.eval_every = 0;
  return c;
}

std::vector<float> params_of(const Transformer& m) {
  const Tensor& p = m.param_buffer();
  return {p.data<float>(), p.data<float>() + p.numel()};
}

// A run stopped after 4 steps, saved, and resumed by a new process (a new model and trainer)
// takes the same 6 remaining steps as the run that never stopped, bit for bit.
TEST(Checkpoint, ResumeOnTheSameLayoutIsExact) {
  const std::string root = tmpdir("exact");
  const ModelConfig mc = model_preset("gpt2-tiny");
  Transformer straight(mc, make_backend("cpu"), 7);
  Trainer ts(straight, config(2), text_data(), nullptr);
  std::vector<float> want;
  for (int i = 0; i < 10; ++i) want.push_back(ts.step().loss);
  {
    Transformer first(mc, make_backend("cpu"), 7);
    Trainer t(first, config(2), text_data(), nullptr);
    for (int i = 0; i < 4; ++i) ASSERT_EQ(t.step().loss, want[size_t(i)]);
    const std::string dir = t.save_checkpoint(root);
    EXPECT_EQ(dir, root + "/step-00000004");
  }
  Transformer second(mc, make_backend("cpu"), 99);  // other init: everything must come from disk
  Trainer t(second, config(2), text_data(), nullptr);
  EXPECT_EQ(t.load_checkpoint(root), root + "/step-00000004");
  EXPECT_EQ(t.steps_done(), 4);
  for (int i = 4; i < 10; ++i) ASSERT_EQ(t.step().loss, want[size_t(i)]) << "step " << i + 1;
  EXPECT_EQ(params_of(second), params_of(straight));
  fs::remove_all(root);
}

// Asynchronous: the state of step 4 is copied when the save starts; training goes on while the
// files are written; step() commits it once written (or finish_checkpoint() does), and it
// resumes exactly like a synchronous one.
TEST(Checkpoint, AsynchronousSaveSnapshotsTheStepItWasStartedAt) {
  const std::string root = tmpdir("async");
  const ModelConfig mc = model_preset("gpt2-tiny");
  Transformer straight(mc, make_backend("cpu"), 7);
  Trainer ts(straight, config(), text_data(), nullptr);
  std::vector<float> want;
  for (int i = 0; i < 10; ++i) want.push_back(ts.step().loss);
  {
    Transformer first(mc, make_backend("cpu"), 7);
    Trainer t(first, config(), text_data(), nullptr);
    for (int i = 0; i < 4; ++i) t.step();
    EXPECT_EQ(t.save_checkpoint_async(root), root + "/step-00000004");
    EXPECT_TRUE(t.checkpoint_pending());
    std::string committed;
    for (int i = 4; i < 10; ++i) {  // training goes on; a step commits the save once written
      const StepStats s = t.step();
      ASSERT_EQ(s.loss, want[size_t(i)]) << "the save must not disturb training";
      if (!s.checkpoint.empty()) committed = s.checkpoint;
    }
    if (committed.empty()) committed = t.finish_checkpoint();
    EXPECT_EQ(committed, root + "/step-00000004");
    EXPECT_FALSE(t.checkpoint_pending());
  }
  Transformer second(mc, make_backend("cpu"), 99);
  Trainer t(second, config(), text_data(), nullptr);
  t.load_checkpoint(root);
  EXPECT_EQ(t.steps_done(), 4);
  for (int i = 4; i < 10; ++i) ASSERT_EQ(t.step().loss, want[size_t(i)]) << "step " << i + 1;
  fs::remove_all(root);
}

TEST(Checkpoint, LatestRetentionAndInterruptedSaves) {
  const std::string root = tmpdir("keep");
  Transformer m(model_preset("gpt2-tiny"), make_backend("cpu"), 7);
  Trainer t(m, config(), text_data(), nullptr);
  for (int s = 0; s < 4; ++s) {
    t.step();
    t.step();
    t.save_checkpoint(root, /*keep_last=*/2);
  }
  std::vector<std::string> dirs;
  for (const auto& d : fs::directory_iterator(root)) dirs.push_back(d.path().filename().string());
  std::sort(dirs.begin(), dirs.end());
  EXPECT_EQ(dirs, (std::vector<std::string>{"latest", "step-00000006", "step-00000008"}));
  EXPECT_EQ(read_bytes(root + "/latest"), "step-00000008\n");
  // A later save that died before its manifest: debris, never read.
  fs::create_directory(root + "/step-00000010");
  write_bytes(root + "/step-00000010/rank-00000-of-00001.safetensors", "partial");
  EXPECT_EQ(CheckpointReader::find(root), root + "/step-00000008");
  // `latest` naming something uncommitted falls back to the newest committed checkpoint.
  write_bytes(root + "/latest", "step-00000010\n");
  EXPECT_EQ(CheckpointReader::find(root), root + "/step-00000008");
  EXPECT_ERROR(CheckpointReader r(root + "/step-00000010"), "step-00000010",
               "no committed checkpoint");
  const std::string empty = tmpdir("none");
  EXPECT_EQ(CheckpointReader::find(empty), "");
  EXPECT_ERROR(CheckpointReader r(empty), "no committed checkpoint");
  // Gone back to step 6 through `latest` (step 8 left where it is): the saves after it keep
  // their own newest 2, and neither count nor delete the later step 8. Steps from 10^8 on have
  // more digits and are still checkpoints.
  write_bytes(root + "/latest", "step-00000006\n");
  Transformer back(model_preset("gpt2-tiny"), make_backend("cpu"), 7);
  Trainer bt(back, config(), text_data(), nullptr);
  bt.load_checkpoint(root);
  ASSERT_EQ(bt.steps_done(), 6);
  bt.step();
  bt.save_checkpoint(root, /*keep_last=*/2);  // step 7: keeps 6 and 7
  EXPECT_TRUE(fs::exists(root + "/step-00000006/manifest.json"));
  EXPECT_TRUE(fs::exists(root + "/step-00000008/manifest.json"));
  fs::rename(root + "/step-00000008", root + "/step-100000008");
  EXPECT_EQ(CheckpointReader::find(root), root + "/step-00000007");
  fs::remove(root + "/latest");
  EXPECT_EQ(CheckpointReader::find(root), root + "/step-100000008");
  fs::remove_all(root);
  fs::remove_all(empty);
}

// Saving a step that is already committed (a Python save after a load, a run gone back through
// `latest`) never leaves the step unreadable: the old checkpoint is whole until the new one is.
TEST(Checkpoint, AStepSavedAgainStaysReadableUntilTheNewOneCommits) {
  const std::string root = tmpdir("again");
  auto writer = [&](float value) {
    auto w = std::make_unique<CheckpointWriter>(root, 5, nullptr);
    Tensor t = Tensor::empty({6}, DType::f32);
    for (int i = 0; i < 6; ++i) t.data<float>()[i] = value + float(i);
    w->add_range("w", 6, 0, t, {2, 3});
    w->set_meta("{\"value\":" + std::to_string(int(value)) + "}");
    return w;
  };
  auto value_at = [&](const std::string& dir) {
    CheckpointReader r(dir);
    Tensor t = Tensor::empty({6}, DType::f32);
    r.read_range("w", 0, 6, t);
    EXPECT_EQ(t.data<float>()[5], t.data<float>()[0] + 5.f);
    return t.data<float>()[0];
  };
  writer(10.f)->commit(2);
  EXPECT_EQ(value_at(root), 10.f);
  {
    // The second save writes its files and dies before its manifest (publish never runs).
    auto w = writer(20.f);
    EXPECT_EQ(w->directory(), root + "/step-00000005");
    w->write_files();
    EXPECT_TRUE(fs::exists(root + "/step-00000005.new/rank-00000-of-00001.safetensors"));
    EXPECT_EQ(CheckpointReader::find(root), root + "/step-00000005");
    EXPECT_EQ(value_at(root), 10.f);  // the old one, whole, checksums and all
  }
  // The next save replaces it and clears the debris of the one that died.
  EXPECT_EQ(writer(30.f)->commit(2), root + "/step-00000005");
  EXPECT_EQ(value_at(root), 30.f);
  EXPECT_EQ(CheckpointReader(root).meta(), "{\"value\":30}");
  std::vector<std::string> names;
  for (const auto& d : fs::directory_iterator(root)) names.push_back(d.path().filename().string());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"latest", "step-00000005"}));
  // A save of another step clears a replacement that died, too.
  writer(40.f)->write_files();
  ASSERT_TRUE(fs::is_directory(root + "/step-00000005.new"));
  auto later = std::make_unique<CheckpointWriter>(root, 6, nullptr);
  later->set_meta("{}");
  later->commit(2);
  EXPECT_FALSE(fs::exists(root + "/step-00000005.new"));
  EXPECT_EQ(value_at(root + "/step-00000005"), 30.f);
  fs::remove_all(root);
}

// Where the filesystem has no atomic exchange (NFS; NURI_CKPT_NO_EXCHANGE=1 here), the old
// checkpoint moves aside first. A crash between the two renames leaves the step's name empty
// and both checkpoints beside it: a resume reads the new one, and the next save puts it back.
TEST(Checkpoint, AReplacementWithoutExchangeRecoversFromACrashBetweenItsRenames) {
  const std::string root = tmpdir("aside");
  auto save = [&](int64_t step, float value) {
    CheckpointWriter w(root, step, nullptr);
    Tensor t = Tensor::empty({3}, DType::f32);
    for (int i = 0; i < 3; ++i) t.data<float>()[i] = value + float(i);
    w.add_range("w", 3, 0, t);
    w.set_meta("{}");
    return w.commit(3);
  };
  auto value_at = [&](const std::string& dir) {
    CheckpointReader r(dir);
    Tensor t = Tensor::empty({3}, DType::f32);
    r.read_range("w", 0, 3, t);
    return t.data<float>()[0];
  };
  ::setenv("NURI_CKPT_NO_EXCHANGE", "1", 1);
  save(5, 10.f);
  EXPECT_EQ(save(5, 20.f), root + "/step-00000005");  // replaced by the two renames
  EXPECT_EQ(value_at(root), 20.f);
  EXPECT_FALSE(fs::exists(root + "/step-00000005.old"));
  EXPECT_FALSE(fs::exists(root + "/step-00000005.new"));
  // The state a crash between the renames leaves: the old one aside, the new one committed
  // under its staging name, nothing at step-00000005, and `latest` naming it.
  const std::string kept = tmpdir("aside_kept");
  fs::copy(root + "/step-00000005", kept + "/step", fs::copy_options::recursive);  // 20
  save(5, 30.f);
  fs::rename(root + "/step-00000005", root + "/step-00000005.new");
  fs::rename(kept + "/step", root + "/step-00000005.old");
  fs::remove_all(kept);
  ASSERT_EQ(read_bytes(root + "/latest"), "step-00000005\n");
  EXPECT_EQ(CheckpointReader::find(root), root + "/step-00000005.new");
  EXPECT_EQ(value_at(root), 30.f);
  save(6, 40.f);  // the next save puts the new one back and clears the old
  EXPECT_EQ(value_at(root + "/step-00000005"), 30.f);
  EXPECT_FALSE(fs::exists(root + "/step-00000005.old"));
  EXPECT_FALSE(fs::exists(root + "/step-00000005.new"));
  EXPECT_EQ(value_at(root), 40.f);
  ::unsetenv("NURI_CKPT_NO_EXCHANGE");
  fs::remove_all(root);
}

class CheckpointTamper : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = tmpdir("tamper");
    Transformer m(model_preset("gpt2-tiny"), make_backend("cpu"), 7);
    Trainer t(m, config(), text_data(), nullptr);
    t.step();
    dir_ = t.save_checkpoint(root_);
  }
  void TearDown() override { fs::remove_all(root_); }
  std::string load(const ModelConfig& mc, const TrainConfig& tc = config()) {
    Transformer m(mc, make_backend("cpu"), 7);
    Trainer t(m, tc, text_data(), nullptr);
    return error_of([&] { t.load_checkpoint(root_); });
  }
  std::string root_, dir_;
};

TEST_F(CheckpointTamper, AFlippedByteFailsTheChecksumNamingTheFile) {
  std::string bytes = read_bytes(dir_ + "/rank-00000-of-00001.safetensors");
  bytes[bytes.size() / 2] ^= 0x10;
  write_bytes(dir_ + "/rank-00000-of-00001.safetensors", bytes);
  const std::string msg = load(model_preset("gpt2-tiny"));
  EXPECT_NE(msg.find("rank-00000-of-00001.safetensors fails its checksum"), std::string::npos)
      << msg;
}

// The manifest's own checksum: a digit of the step changed (what the files' checksums cannot
// see) is refused; the same manifest without the field (as nuri wrote them before it) loads.
TEST_F(CheckpointTamper, AChangedManifestFailsItsChecksum) {
  const std::string path = dir_ + "/manifest.json";
  const std::string text = read_bytes(path);
  nlohmann::json m = nlohmann::json::parse(text);
  ASSERT_TRUE(m.contains("manifest_sha256")) << text.substr(0, 200);
  ASSERT_EQ(m["step"], 1);
  const size_t at = text.find("\"step\": 1,");
  ASSERT_NE(at, std::string::npos) << text.substr(0, 400);
  std::string changed = text;
  changed.replace(at, 10, "\"step\": 7,");
  write_bytes(path, changed);
  const std::string msg = load(model_preset("gpt2-tiny"));
  EXPECT_NE(msg.find("manifest.json fails its checksum"), std::string::npos) << msg;
  EXPECT_NE(msg.find("use an earlier checkpoint"), std::string::npos) << msg;
  // Neither a checksum of the wrong type nor a truncated one is taken.
  nlohmann::json wrong = m;
  wrong["manifest_sha256"] = 12;
  write_bytes(path, wrong.dump(1));
  EXPECT_NE(load(model_preset("gpt2-tiny")).find("fails its checksum"), std::string::npos);
  wrong["manifest_sha256"] = m["manifest_sha256"].get<std::string>().substr(0, 63);
  write_bytes(path, wrong.dump(1));
  EXPECT_NE(load(model_preset("gpt2-tiny")).find("fails its checksum"), std::string::npos);
  // Without the field: read as before (formatting does not matter, only the content).
  m.erase("manifest_sha256");
  write_bytes(path, m.dump(4));
  EXPECT_EQ(load(model_preset("gpt2-tiny")), "no error");
  // Reformatted with the field kept: still the same content, still its checksum.
  write_bytes(path, nlohmann::json::parse(text).dump(2));
  EXPECT_EQ(load(model_preset("gpt2-tiny")), "no error");
}

TEST_F(CheckpointTamper, ATruncatedFileIsNamed) {
  const std::string f = dir_ + "/rank-00000-of-00001.safetensors";
  const std::string bytes = read_bytes(f);
  write_bytes(f, bytes.substr(0, bytes.size() - 100));
  const std::string msg = load(model_preset("gpt2-tiny"));
  EXPECT_NE(msg.find("rank-00000-of-00001.safetensors has"), std::string::npos) << msg;
  EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;
}

TEST_F(CheckpointTamper, AMissingManifestMeansNoCheckpoint) {
  fs::remove(dir_ + "/manifest.json");
  const std::string msg = load(model_preset("gpt2-tiny"));
  EXPECT_NE(msg.find("no committed checkpoint"), std::string::npos) << msg;
}

TEST_F(CheckpointTamper, AnotherModelConfigIsNamedField) {
  ModelConfig mc = model_preset("gpt2-tiny");
  mc.n_layer = 3;
  const std::string msg = load(mc);
  EXPECT_NE(msg.find("n_layer=2; this run's model has n_layer=3"), std::string::npos) << msg;
}

TEST_F(CheckpointTamper, AnotherGlobalBatchOrSeedIsRefused) {
  TrainConfig tc = config();
  tc.micro_batch = 3;
  const std::string batch = load(model_preset("gpt2-tiny"), tc);
  EXPECT_NE(batch.find("global batch of 2 sequences; this run's is 3"), std::string::npos) << batch;
  EXPECT_NE(batch.find("set train.global_batch (--global-batch) to 2"), std::string::npos) << batch;
  // A run that sets its global batch is told to set it to the checkpoint's (its grad_accum is
  // derived from it, so choosing one would change nothing).
  tc.micro_batch = 2;
  tc.global_batch = 4;
  const std::string global = load(model_preset("gpt2-tiny"), tc);
  EXPECT_NE(global.find("global batch of 2 sequences; this run's is 4 (train.global_batch). Set "
                        "train.global_batch (--global-batch) to 2"),
            std::string::npos)
      << global;
  tc = config();
  tc.seed = 5;
  EXPECT_NE(load(model_preset("gpt2-tiny"), tc).find("data seed 1337"), std::string::npos);
}

/// Rewrites the checkpoint with its parameters changed by `edit` (a committed, consistent
/// checkpoint whose tensors are wrong for the model).
void rewrite_model(const std::string& root, const std::string& dir,
                   const std::function<void(std::vector<std::pair<std::string, Tensor>>&)>& edit,
                   const std::function<void(nlohmann::json&)>& edit_meta = {}) {
  CheckpointReader r(dir);
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const std::string& n : r.range_names()) {
    if (n.rfind("adamw.", 0) == 0) continue;
    Tensor t = Tensor::empty(r.range_shape(n), DType::f32);
    r.read_range(n, 0, t.numel(), t.view({t.numel()}));
    tensors.push_back({n, t});
  }
  edit(tensors);
  const int64_t numel = r.range_numel("adamw.m");
  Tensor m = Tensor::empty({numel}, DType::f32), v = Tensor::empty({numel}, DType::f32);
  r.read_range("adamw.m", 0, numel, m);
  r.read_range("adamw.v", 0, numel, v);
  nlohmann::json meta = nlohmann::json::parse(r.meta());
  if (edit_meta) edit_meta(meta);
  CheckpointWriter w(root, r.step(), nullptr);
  for (auto& [n, t] : tensors) w.add_range(n, t.numel(), 0, t.view({t.numel()}), t.shape());
  w.add_range("adamw.m", numel, 0, m);
  w.add_range("adamw.v", numel, 0, v);
  w.set_meta(meta.dump());
  w.commit(3);
}

TEST_F(CheckpointTamper, MissingExtraAndMisshapenTensorsAreNamed) {
  rewrite_model(root_, dir_, [](auto& ts) { ts.erase(ts.begin() + 3); });
  std::string msg = load(model_preset("gpt2-tiny"));
  EXPECT_NE(msg.find("is missing"), std::string::npos) << msg;
  EXPECT_NE(msg.find("tensor 'h.0."), std::string::npos) << msg;

  SetUp();
  rewrite_model(root_, dir_, [](auto& ts) { ts.push_back({"h.9.extra.weight", Tensor::zeros({2})}); });
  msg = load(model_preset("gpt2-tiny"));
  EXPECT_NE(msg.find("'h.9.extra.weight' is not a parameter"), std::string::npos) << msg;

  SetUp();
  rewrite_model(root_, dir_, [](auto& ts) {
    for (auto& [n, t] : ts)
      if (n == "ln_f.weight") t = Tensor::zeros({t.numel() + 1});
  });
  msg = load(model_preset("gpt2-tiny"));
  EXPECT_NE(msg.find("'ln_f.weight' has shape (65,), the model's is (64,)"), std::string::npos)
      << msg;
}

TEST_F(CheckpointTamper, OtherTrainingDataIsRefusedUnlessAskedFor) {
  auto tokens_of = [](const std::shared_ptr<TokenFile>& f) {
    std::vector<uint32_t> v(size_t(f->size()));
    for (int64_t i = 0; i < f->size(); ++i) v[size_t(i)] = f->at(i);
    return v;
  };
  const std::vector<uint32_t> saved = tokens_of(text_data());
  std::vector<uint32_t> edited = saved, longer = saved;
  edited[100] = 'Q';
  longer.push_back('!');
  auto load_on = [&](const std::vector<uint32_t>& tokens, bool check_data, int64_t* steps) {
    Transformer m(model_preset("gpt2-tiny"), make_backend("cpu"), 7);
    Trainer t(m, config(), TokenFile::from_tokens(tokens, "other"), nullptr);
    const std::string msg = error_of([&] { t.load_checkpoint(root_, check_data); });
    if (steps) *steps = t.steps_done();
    return msg;
  };
  // One token changed: the same count, another fingerprint.
  std::string msg = load_on(edited, true, nullptr);
  EXPECT_NE(msg.find("was saved training on other data: " + std::to_string(saved.size()) +
                     " tokens, fingerprint " +
                     TokenFile::from_tokens(saved)->fingerprint()),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("this run's training data (other) has " + std::to_string(saved.size()) +
                     " tokens, fingerprint " + TokenFile::from_tokens(edited)->fingerprint()),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("--no-check-data"), std::string::npos) << msg;
  msg = load_on(longer, true, nullptr);
  EXPECT_NE(msg.find("has " + std::to_string(longer.size()) + " tokens"), std::string::npos)
      << msg;
  // The same tokens under another name resume; so does other data when asked for.
  int64_t steps = 0;
  EXPECT_EQ(load_on(saved, true, &steps), "no error");
  EXPECT_EQ(steps, 1);
  steps = 0;
  EXPECT_EQ(load_on(edited, false, &steps), "no error");
  EXPECT_EQ(steps, 1);
  // A checkpoint of before the data was recorded is not checked.
  rewrite_model(root_, dir_, [](auto&) {}, [](nlohmann::json& meta) {
    ASSERT_TRUE(meta["data"].contains("fingerprint"));
    meta["data"].erase("fingerprint");
    meta["data"].erase("tokens");
  });
  steps = 0;
  EXPECT_EQ(load_on(edited, true, &steps), "no error");
  EXPECT_EQ(steps, 1);
}

TEST_F(CheckpointTamper, AnExportNeitherOverwritesItsCheckpointNorLeavesDebris) {
  const std::string own = dir_ + "/rank-00000-of-00001.safetensors";
  const std::string before = read_bytes(own);
  EXPECT_ERROR(consolidate_checkpoint(root_, own), "inside checkpoint", "write it elsewhere");
  EXPECT_EQ(read_bytes(own), before);
  EXPECT_ERROR(consolidate_checkpoint(root_, root_ + "/latest"), "a file of the checkpoints'");
  EXPECT_ERROR(consolidate_checkpoint(dir_, root_ + "/step-00000009/model.safetensors"),
               "inside checkpoint directory");
  EXPECT_EQ(checkpoint_owns(dir_, root_ + "/model.safetensors"), "");  // beside them: fine
  EXPECT_EQ(checkpoint_owns(dir_, root_ + "-other/model.safetensors"), "");
  EXPECT_EQ(read_bytes(root_ + "/latest"), "step-00000001\n");
  const std::string elsewhere = tmpdir("export");
  EXPECT_ERROR(consolidate_checkpoint(root_, elsewhere), "is a directory", "model.safetensors");
  // A checkpoint that fails while its tensors are copied leaves no partial model file.
  std::string bytes = before;
  bytes[bytes.size() - 40] ^= 0x10;
  write_bytes(own, bytes);
  const std::string out = elsewhere + "/model.safetensors";
  EXPECT_ERROR(consolidate_checkpoint(root_, out), "fails its checksum");
  EXPECT_FALSE(fs::exists(out));
  EXPECT_TRUE(fs::is_empty(elsewhere));  // nor its temporary file
  fs::remove_all(elsewhere);
}

TEST_F(CheckpointTamper, OtherDataWithAShorterEpochGoesOnAtTheNextEpoch) {
  // Saved after 1 step: batch 1 of epoch 0. 100 tokens of 32-token samples make 3 samples, one
  // global batch of 2 an epoch, so batch 1 does not exist in this data's epoch 0.
  std::vector<uint32_t> few(100);
  for (size_t i = 0; i < few.size(); ++i) few[i] = uint32_t('a' + i % 26);
  Transformer m(model_preset("gpt2-tiny"), make_backend("cpu"), 7);
  Trainer t(m, config(), TokenFile::from_tokens(few, "few"), nullptr);
  EXPECT_ERROR(t.check_checkpoint_data(root_), "saved training on other data");
  t.load_checkpoint(root_, /*check_data=*/false);
  EXPECT_EQ(t.steps_done(), 1);
  EXPECT_EQ(t.data_position().epoch, 1);
  EXPECT_EQ(t.data_position().batch, 0);
  const float loss = t.step().loss;
  EXPECT_TRUE(std::isfinite(loss));
  EXPECT_EQ(t.data_position().epoch, 2);
}

}  // namespace
}  // namespace nuri
