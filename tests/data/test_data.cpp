// Token files (llm.c layout v1/v2, .npy), their validation errors, the byte tokenizer, and the
// global sampler's guarantees: each epoch visits every sample once, ranks and micro-batches
// split a global batch without overlap, and the order is a pure function of (seed, epoch).
#include <gtest/gtest.h>

#include "test_util.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "nuri/data/corpus.h"
#include "nuri/data/sampler.h"
#include "nuri/data/token_file.h"

namespace nuri {
namespace {

namespace fs = std::filesystem;

std::string temp_path(const std::string& name) {
  // This process's directory, removed at its exit.
  static const struct Scratch {
    fs::path dir = fs::temp_directory_path() / ("nuri-test-data-" + std::to_string(::getpid()));
    ~Scratch() {
      std::error_code ec;
      fs::remove_all(dir, ec);
    }
  } scratch;
  fs::create_directories(scratch.dir);
  return (scratch.dir / name).string();
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

using test::error_of;

TEST(TokenFile, RoundTripsUint16AndUint32) {
  const std::string p16 = temp_path("small.bin"), p32 = temp_path("wide.bin");
  write_token_file(p16, {1, 2, 65535, 7});
  write_token_file(p32, {1, 70000, 3});
  auto f16 = TokenFile::open(p16), f32 = TokenFile::open(p32);
  ASSERT_EQ(f16->size(), 4);
  EXPECT_EQ(f16->at(2), 65535u);
  EXPECT_EQ(fs::file_size(p16), size_t(1024 + 4 * 2));  // version 1: uint16
  ASSERT_EQ(f32->size(), 3);
  EXPECT_EQ(f32->at(1), 70000u);
  EXPECT_EQ(fs::file_size(p32), size_t(1024 + 3 * 4));  // uint32
  int32_t out[2];
  f32->read(1, 2, out);
  EXPECT_EQ(out[0], 70000);
  EXPECT_EQ(out[1], 3);
  // The headers are llm.c's: GPT-2's (20240520, version 1) and Llama 3's (20240801, version 7).
  auto header = [](const std::string& p) {
    std::vector<int32_t> h(3);
    std::ifstream(p, std::ios::binary).read(reinterpret_cast<char*>(h.data()), 12);
    return h;
  };
  EXPECT_EQ(header(p16), (std::vector<int32_t>{20240520, 1, 4}));
  EXPECT_EQ(header(p32), (std::vector<int32_t>{20240801, 7, 3}));
}

// A header over its tokens, written here byte by byte as llm.c's data_common.py lays it out.
std::string llmc_file(int32_t magic, int32_t version, int32_t count, const std::string& tokens) {
  std::vector<int32_t> h(256, 0);
  h[0] = magic;
  h[1] = version;
  h[2] = count;
  return std::string(reinterpret_cast<const char*>(h.data()), 1024) + tokens;
}

// Files from earlier nuri builds (20240520 with version 2 over uint32 tokens) are still read;
// bytes past the counted tokens are refused, so joined files and a header naming the wrong
// width cannot pass as other tokens.
TEST(TokenFile, ReadsEveryHeaderItWroteAndRefusesBytesPastItsTokens) {
  const std::string p = temp_path("llmc.bin");
  const uint32_t wide[3] = {128000, 5, 128255};
  const std::string wide_bytes(reinterpret_cast<const char*>(wide), 12);
  for (auto [magic, version] : {std::pair{20240801, 7}, std::pair{20240520, 2}}) {
    write_bytes(p, llmc_file(magic, version, 3, wide_bytes));
    auto f = TokenFile::open(p, 128256);
    ASSERT_EQ(f->size(), 3) << magic;
    EXPECT_EQ(f->at(0), 128000u);
    EXPECT_EQ(f->at(2), 128255u);
    EXPECT_TRUE(is_token_file(p)) << magic;
  }
  write_bytes(p, llmc_file(20240801, 1, 3, wide_bytes));
  EXPECT_NE(error_of([&] { TokenFile::open(p); })
                .find("unsupported version 1 at offset 4 (with magic 20240801: 7 = uint32"),
            std::string::npos);
  // uint32 tokens under a uint16 header: the file is twice what the header counts.
  write_bytes(p, llmc_file(20240520, 1, 3, wide_bytes));
  std::string e = error_of([&] { TokenFile::open(p); });
  EXPECT_NE(e.find("llmc.bin: 6 bytes follow the 3 uint16 tokens its header counts (a 1030-byte "
                   "file)"), std::string::npos) << e;
  EXPECT_NE(e.find("this file is the size uint32 tokens would make"), std::string::npos) << e;
  // Two files joined: the second's header and tokens follow the first's.
  const std::string one = llmc_file(20240520, 1, 2, std::string("\x01\x00\x02\x00", 4));
  write_bytes(p, one + one);
  e = error_of([&] { TokenFile::open(p); });
  EXPECT_NE(e.find("1028 bytes follow the 2 uint16 tokens"), std::string::npos) << e;
  EXPECT_NE(e.find("several token files joined into one"), std::string::npos) << e;
  EXPECT_EQ(e.find("the size uint32 tokens would make"), std::string::npos) << e;
}

// Shards joined without copying read as the one sequence they make: token by token, in reads
// across their boundaries, in slices (and slices of slices), with the same fingerprint, mask
// and largest id; a vocabulary check names the shard and its byte offset.
TEST(TokenFile, JoinedFilesReadAsOneSequence) {
  const std::string a = temp_path("join_a.bin"), b = temp_path("join_b.bin");
  write_token_file(a, {1, 2, 3});             // uint16
  write_token_file(b, {70000, 5, 6, 7, 8});   // uint32
  const std::vector<uint32_t> all = {1, 2, 3, 70000, 5, 6, 7, 8, 9, 10};
  auto joined = TokenFile::join({TokenFile::open(a), TokenFile::from_tokens({}),
                                 TokenFile::open(b), TokenFile::from_tokens({9, 10})},
                                "three shards");
  ASSERT_EQ(joined->size(), 10);
  for (int64_t i = 0; i < 10; ++i) EXPECT_EQ(joined->at(i), all[size_t(i)]) << i;
  std::vector<int32_t> got(7);
  joined->read(2, 7, got.data());  // every part: 1 of a, all of b, 1 of the last
  EXPECT_EQ(got, (std::vector<int32_t>{3, 70000, 5, 6, 7, 8, 9}));
  EXPECT_EQ(joined->fingerprint(), TokenFile::from_tokens(all)->fingerprint());
  EXPECT_EQ(joined->max_token(), 70000u);
  // A slice past the end is refused, also where start + n would overflow (Python may ask).
  for (const auto& range : std::vector<std::pair<int64_t, int64_t>>{
           {1, INT64_MAX}, {int64_t(1) << 62, int64_t(1) << 62}, {11, 0}, {3, 8}}) {
    const int64_t start = range.first, n = range.second;
    EXPECT_NE(error_of([&] { TokenFile::slice(joined, start, n); }).find("is outside"),
              std::string::npos) << start << " " << n;
  }
  auto slice = TokenFile::slice(joined, 2, 6);  // 3 .. 7
  auto inner = TokenFile::slice(slice, 1, 4);   // 70000 .. 7
  EXPECT_EQ(slice->at(0), 3u);
  EXPECT_EQ(inner->at(0), 70000u);
  EXPECT_EQ(inner->at(3), 7u);
  std::vector<int32_t> part(3);
  inner->read(1, 3, part.data());
  EXPECT_EQ(part, (std::vector<int32_t>{5, 6, 7}));
  EXPECT_EQ(inner->fingerprint(), TokenFile::from_tokens({70000, 5, 6, 7})->fingerprint());
  joined->set_mask({1, 1, 0, 0, 1, 1, 1, 1, 1, 0});
  EXPECT_FALSE(TokenFile::slice(joined, 2, 6)->trained(0));
  EXPECT_TRUE(TokenFile::slice(joined, 2, 6)->trained(2));
  // The vocabulary: parts opened against one keep the joined file checked; a check names the
  // shard holding the id.
  auto checked = TokenFile::join({TokenFile::open(a, 4), TokenFile::open(b, 70001)}, "two");
  checked->check_vocab(70001);
  const std::string e = error_of([&] { checked->check_vocab(100); });
  EXPECT_NE(e.find("join_b.bin: token id 70000 at token index 0 (byte offset 1024) is >= "
                   "vocab_size 100"), std::string::npos) << e;
  // The end-of-text (a document mask's separator): the parts' where they agree, kept by slices.
  EXPECT_EQ(joined->end_of_text(), -1);
  auto with_eot = [](std::vector<uint32_t> ids, int64_t eot) {
    auto f = TokenFile::from_tokens(std::move(ids));
    f->set_end_of_text(eot);
    return f;
  };
  auto agreed = TokenFile::join({with_eot({1, 2}, 7), with_eot({3}, 7)}, "agreed");
  EXPECT_EQ(agreed->end_of_text(), 7);
  EXPECT_EQ(TokenFile::slice(agreed, 1, 2)->end_of_text(), 7);
  EXPECT_EQ(TokenFile::join({with_eot({1, 2}, 7), with_eot({3}, 8)}, "two")->end_of_text(), -1);
}

TEST(TokenFile, WritingToADirectoryIsRefusedAndLeavesNothing) {
  const std::string dir = temp_path("a-directory");
  fs::create_directories(dir);
  EXPECT_NE(error_of([&] { write_token_file(dir, {1, 2, 3}); }).find("is a directory"),
            std::string::npos);
  EXPECT_FALSE(fs::exists(dir + ".tmp"));
  EXPECT_TRUE(fs::is_directory(dir));
}

TEST(TokenFile, TheFingerprintFollowsTheTokensNotTheFile) {
  const std::vector<uint32_t> tokens = {5, 6, 7, 8, 9, 10, 11};
  const std::string path = temp_path("print.bin");
  write_token_file(path, tokens);  // uint16 on disk, uint32 in memory: the same tokens
  const std::string print = TokenFile::open(path)->fingerprint();
  ASSERT_EQ(print.size(), 16u);
  EXPECT_EQ(TokenFile::from_tokens(tokens, "elsewhere")->fingerprint(), print);
  // One token changed, one more token, or one token masked out: other data.
  std::vector<uint32_t> edited = tokens;
  edited[3] = 80;
  EXPECT_NE(TokenFile::from_tokens(edited)->fingerprint(), print);
  std::vector<uint32_t> longer = tokens;
  longer.push_back(0);
  EXPECT_NE(TokenFile::from_tokens(longer)->fingerprint(), print);
  auto masked = TokenFile::from_tokens(tokens);
  masked->set_mask({1, 1, 1, 0, 1, 1, 1});
  EXPECT_NE(masked->fingerprint(), print);
  // A slice's fingerprint is its tokens'.
  auto whole = TokenFile::from_tokens({1, 5, 6, 7, 8, 9, 10, 11, 2});
  EXPECT_EQ(TokenFile::slice(whole, 1, 7)->fingerprint(), print);
}

TEST(TokenFile, AboveItsLimitTheFingerprintSamplesEvenlySpacedTokens) {
  const int64_t n = TokenFile::kFingerprintWhole + 1;
  std::vector<uint32_t> tokens(size_t(n), 3);
  const std::string print = TokenFile::from_tokens(tokens)->fingerprint();
  // The first and last tokens are sampled, and so is every (n - 1) / (samples - 1)-th.
  const int64_t stride = (n - 1) / (TokenFile::kFingerprintSamples - 1);
  for (int64_t at : {int64_t(0), n - 1, stride * 100}) {
    std::vector<uint32_t> edited = tokens;
    edited[size_t(at)] = 4;
    EXPECT_NE(TokenFile::from_tokens(std::move(edited))->fingerprint(), print) << at;
  }
  // A token between two samples is not read: so large data is told apart from other data by
  // its count and its samples, not from an edit of one token.
  tokens[size_t(stride * 100 + 1)] = 4;
  EXPECT_EQ(TokenFile::from_tokens(std::move(tokens))->fingerprint(), print);
}

// A 1-D .npy written by hand: magic, version 1.0, header dict padded to 64 bytes, data.
std::string npy(const std::string& descr, const std::string& shape, const std::string& data) {
  std::string dict = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
  while ((10 + dict.size() + 1) % 64) dict += ' ';
  dict += '\n';
  std::string h = "\x93NUMPY";
  h += char(1);
  h += char(0);
  h += char(dict.size() & 0xff);
  h += char(dict.size() >> 8);
  return h + dict + data;
}

TEST(TokenFile, ReadsNpy) {
  const std::string p = temp_path("t.npy");
  const uint16_t v16[3] = {5, 6, 300};
  write_bytes(p, npy("<u2", "(3,)", std::string(reinterpret_cast<const char*>(v16), 6)));
  auto f = TokenFile::open(p, 301);
  ASSERT_EQ(f->size(), 3);
  EXPECT_EQ(f->at(2), 300u);
  const uint32_t v32[2] = {9, 100000};
  write_bytes(p, npy("<u4", "(2,)", std::string(reinterpret_cast<const char*>(v32), 8)));
  EXPECT_EQ(TokenFile::open(p)->at(1), 100000u);
}

// .npy token arrays of any integer type whose values are token ids (issue #25).
TEST(TokenFile, ReadsNpyOfAnyIntegerTypeWhoseValuesAreTokenIds) {
  const std::string p = temp_path("any.npy");
  auto bytes = [](const auto& v) {
    return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(v[0]));
  };
  const std::vector<int64_t> i8 = {0, 5, 4294967295LL, 70000};
  write_bytes(p, npy("<i8", "(4,)", bytes(i8)));
  auto f = TokenFile::open(p);
  ASSERT_EQ(f->size(), 4);
  EXPECT_EQ(f->at(2), 4294967295u);
  EXPECT_EQ(f->at(3), 70000u);
  const std::vector<uint8_t> u1 = {3, 255, 0};
  write_bytes(p, npy("|u1", "(3,)", bytes(u1)));
  EXPECT_EQ(TokenFile::open(p)->at(1), 255u);
  const std::vector<int16_t> i2 = {7, -2, 9};
  write_bytes(p, npy("<i2", "(3,)", bytes(i2)));
  EXPECT_NE(error_of([&] { TokenFile::open(p); })
                .find("any.npy: value -2 at index 1 (byte offset 130) is not a token id"),
            std::string::npos);
  const std::vector<uint64_t> u8 = {1, uint64_t(1) << 32};
  write_bytes(p, npy("<u8", "(2,)", bytes(u8)));
  EXPECT_NE(error_of([&] { TokenFile::open(p); }).find("value 4294967296 at index 1"),
            std::string::npos);
  const std::vector<int32_t> i4 = {1, 300};
  write_bytes(p, npy("<i4", "(2,)", bytes(i4)));
  EXPECT_NE(error_of([&] { TokenFile::open(p, 257); }).find("token id 300 at token index 1"),
            std::string::npos);
  // Converted values keep their place in the file for messages: an int64 .npy's token 2 is
  // at the header's 128 bytes + 2 · 8, also in a slice (its token 1).
  const std::vector<int64_t> big = {1, 2, 300, 4};
  write_bytes(p, npy("<i8", "(4,)", bytes(big)));
  const std::string conv = error_of([&] { TokenFile::open(p, 257); });
  EXPECT_NE(conv.find("token id 300 at token index 2 (byte offset 144) is >= vocab_size 257"),
            std::string::npos) << conv;
  const std::string sliced =
      error_of([&] { TokenFile::slice(TokenFile::open(p), 1, 3)->check_vocab(257); });
  EXPECT_NE(sliced.find("token id 300 at token index 1 (byte offset 144)"), std::string::npos)
      << sliced;
  // A header NumPy would pad to 64 bytes, cut to an odd length: the uint16 data is misaligned,
  // so it is read and converted instead of mapped (fuzz_token_file found the misaligned load),
  // and values past int16's range stay unsigned.
  const std::vector<uint16_t> u2 = {1, 40000, 65535};
  std::string odd = npy("<u2", "(3,)", bytes(u2));
  const size_t header = 10 + size_t(uint8_t(odd[8])) + (size_t(uint8_t(odd[9])) << 8);
  odd.erase(header - 2, 1);  // one pad space fewer: the data starts at an odd offset
  odd[8] = char(uint8_t(odd[8]) - 1);
  write_bytes(p, odd);
  f = TokenFile::open(p);
  ASSERT_EQ(f->size(), 3);
  EXPECT_EQ(f->at(1), 40000u);
  EXPECT_EQ(f->at(2), 65535u);
}

// A headerless array (nanoGPT's train.bin) is read only when named, and a .bin or .npy with
// neither header is never taken for text (issue #25).
TEST(ReadData, HeaderlessArraysOnlyWhenNamedAndNeverAsText) {
  const std::string bin = temp_path("train.bin");
  const std::vector<uint16_t> v = {10, 20, 30, 50256};
  write_bytes(bin, std::string(reinterpret_cast<const char*>(v.data()), 8));
  const std::string refused = error_of([&] { read_data(bin); });
  EXPECT_NE(refused.find("train.bin: a .bin file without llm.c's header"), std::string::npos)
      << refused;
  EXPECT_NE(refused.find("data.format = \"uint16\""), std::string::npos) << refused;
  auto f = read_data(bin, 50257, nullptr, "uint16");
  ASSERT_EQ(f->size(), 4);
  EXPECT_EQ(f->at(3), 50256u);
  auto wide = read_data(bin, 0, nullptr, "uint32");
  ASSERT_EQ(wide->size(), 2);
  EXPECT_EQ(wide->at(0), 10u + (20u << 16));
  EXPECT_EQ(read_data(bin, 0, nullptr, "text")->size(), 8);  // its bytes, when said to be text
  // A message names a token's byte in the file at its width: uint32 token 1 is at byte 4.
  EXPECT_NE(error_of([&] { read_data(bin, 2000000, nullptr, "uint32"); })
                .find("token id " + std::to_string(30u + (50256u << 16)) +
                      " at token index 1 (byte offset 4)"),
            std::string::npos);
  EXPECT_NE(error_of([&] { read_data(bin, 40, nullptr, "uint16"); })
                .find("token id 50256 at token index 3 (byte offset 6)"),
            std::string::npos);
  write_bytes(bin, std::string(7, 'x'));
  EXPECT_NE(error_of([&] { read_data(bin, 0, nullptr, "uint16"); })
                .find("7 bytes is not a whole number of uint16 tokens (1 bytes left over)"),
            std::string::npos);
  EXPECT_NE(error_of([&] { read_data(bin, 0, nullptr, "utf8"); })
                .find("data format 'utf8' is not one of auto, text, llmc, npy, uint16, uint32"),
            std::string::npos);
  const std::string npy_path = temp_path("not.npy");
  write_bytes(npy_path, "just text");
  EXPECT_NE(error_of([&] { read_data(npy_path); }).find("a .npy file without llm.c's header"),
            std::string::npos);
  write_token_file(bin, {1, 2, 3});
  EXPECT_EQ(read_data(bin)->size(), 3);
  EXPECT_EQ(read_data(bin, 0, nullptr, "llmc")->size(), 3);
  EXPECT_NE(error_of([&] { read_data(bin, 0, nullptr, "npy"); })
                .find("data format 'npy' was given, but the file is an llm.c token file"),
            std::string::npos);
  // A file with a header is never read as a headerless array (its header would be tokens).
  EXPECT_NE(error_of([&] { read_data(bin, 0, nullptr, "uint16"); })
                .find("train.bin starts with the header of a token file (llm.c's .bin), and "
                      "data.format says headerless uint16 tokens; read it with data.format auto"),
            std::string::npos);
  write_bytes(npy_path, npy("<u4", "(2,)", std::string(8, '\0')));
  EXPECT_NE(error_of([&] { read_data(npy_path, 0, nullptr, "uint32"); })
                .find("starts with a .npy header, and data.format says headerless uint32"),
            std::string::npos);
  const std::string txt = temp_path("notes.txt");
  write_bytes(txt, "hello");
  EXPECT_EQ(read_data(txt)->size(), 5);  // anything else is text
}

TEST(TokenFile, BadFilesNameTheFileAndOffset) {
  const std::string p = temp_path("bad.bin");
  write_token_file(p, {1, 2, 3, 4});
  std::string good;
  {
    std::ifstream in(p, std::ios::binary);
    good.assign(std::istreambuf_iterator<char>(in), {});
  }
  std::string bad_magic = good;
  bad_magic[0] = 'X';
  write_bytes(p, bad_magic);
  EXPECT_NE(error_of([&] { TokenFile::open(p); }).find("bad.bin: bad magic"), std::string::npos);
  std::string bad_version = good;
  bad_version[4] = 9;
  write_bytes(p, bad_version);
  EXPECT_NE(error_of([&] { TokenFile::open(p); }).find("unsupported version 9 at offset 4"),
            std::string::npos);
  write_bytes(p, good.substr(0, good.size() - 3));  // cut into the tokens
  const std::string trunc = error_of([&] { TokenFile::open(p); });
  EXPECT_NE(trunc.find("promises 4 tokens"), std::string::npos) << trunc;
  EXPECT_NE(trunc.find("truncated at token 2"), std::string::npos) << trunc;
  write_bytes(p, good.substr(0, 100));  // cut into the header
  EXPECT_NE(error_of([&] { TokenFile::open(p); }).find("shorter than the 1024-byte header"),
            std::string::npos);
  write_bytes(p, "");
  EXPECT_NE(error_of([&] { TokenFile::open(p); }).find("is empty"), std::string::npos);
  EXPECT_NE(error_of([&] { TokenFile::open(temp_path("missing.bin")); }).find("cannot open token file"),
            std::string::npos);
  write_token_file(p, {1, 2, 300, 4});
  const std::string vocab = error_of([&] { TokenFile::open(p, 257); });
  EXPECT_NE(vocab.find("token id 300 at token index 2 (byte offset 1028) is >= vocab_size 257"),
            std::string::npos) << vocab;
  write_bytes(p, npy("<f4", "(2,)", std::string(8, '\0')));
  EXPECT_NE(error_of([&] { TokenFile::open(p); }).find("dtype '<f4' is not an integer type"),
            std::string::npos);
  write_bytes(p, npy("<u2", "(2, 2)", std::string(8, '\0')));
  EXPECT_NE(error_of([&] { TokenFile::open(p); }).find("is not 1-D"), std::string::npos);
  write_bytes(p, npy("<u2", "(10,)", std::string(8, '\0')));
  EXPECT_NE(error_of([&] { TokenFile::open(p); }).find("truncated"), std::string::npos);
}

// Above 2^24 tokens the baseline reads 256 evenly spaced runs of 2^16 tokens, not the data
// whole: on 2^25 tokens of one id (vocab 3), its count is 2^24 + 1 of 2^24 + 3 (add-one), not
// 2^25 + 1 of 2^25 + 3.
TEST(Corpus, TheUnigramBaselineOfLargeDataReadsSampledRuns) {
  const int64_t n = int64_t(1) << 25;
  auto train = TokenFile::from_tokens(std::vector<uint32_t>(size_t(n), 1));
  auto val = TokenFile::from_tokens({1, 1, 1});
  const double sampled = std::pow(2.0, 24);
  EXPECT_DOUBLE_EQ(unigram_baseline(*train, *val, 3), -std::log((sampled + 1) / (sampled + 3)));
  // Small data is read whole.
  auto small = TokenFile::from_tokens({1, 1, 2, 0});
  EXPECT_DOUBLE_EQ(unigram_baseline(*small, *val, 3), -std::log(3.0 / 7.0));
  // With a loss mask only trained tokens count: train's 2 (twice) and one 1, of 3 + 3, and
  // val's trained 2, not its masked 1s.
  auto masked = TokenFile::from_tokens({1, 1, 2, 2, 1, 0});
  masked->set_mask({0, 0, 1, 1, 1, 0});
  auto masked_val = TokenFile::from_tokens({1, 2, 1});
  masked_val->set_mask({0, 1, 0});
  EXPECT_DOUBLE_EQ(unigram_baseline(*masked, *masked_val, 3), -std::log(3.0 / 6.0));
  masked_val->set_mask({0, 0, 0});
  EXPECT_TRUE(std::isnan(unigram_baseline(*masked, *masked_val, 3)));
}

TEST(ByteTokenizer, EncodesBytesAndDecodes) {
  ByteTokenizer t;
  const auto ids = t.encode("h\xc3\xa9!");
  EXPECT_EQ(ids, (std::vector<uint32_t>{'h', 0xc3, 0xa9, '!'}));
  EXPECT_EQ(t.decode({'h', 0xc3, 0xa9, 256}), "h\xc3\xa9\n<|endoftext|>\n");
  const std::string txt = temp_path("t.txt"), bin = temp_path("t.bin");
  write_bytes(txt, "abc");
  EXPECT_EQ(text_file_to_tokens(txt, bin), 4);
  // Into itself: refused, and the text stays.
  EXPECT_NE(error_of([&] { text_file_to_tokens(txt, txt); }).find("is the text file it is made "
                                                                  "from, which it would replace"),
            std::string::npos);
  std::ifstream kept(txt, std::ios::binary);
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(kept), {}), "abc");
  auto f = TokenFile::open(bin, 257);
  EXPECT_EQ(f->at(0), uint32_t('a'));
  EXPECT_EQ(f->at(3), ByteTokenizer::kEndOfText);
}

std::shared_ptr<TokenFile> counting(int64_t n) {
  std::vector<uint32_t> t(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) t[size_t(i)] = uint32_t(i);
  return TokenFile::from_tokens(t);
}

TEST(GlobalSampler, EachEpochVisitsEverySampleOnce) {
  const int64_t seq = 8;
  GlobalSampler s(counting(10 * seq * 6 + 1), seq, 6, 42);  // 60 samples, 10 batches
  ASSERT_EQ(s.num_samples(), 60);
  ASSERT_EQ(s.batches_per_epoch(), 10);
  std::set<int64_t> seen;
  for (int64_t b = 0; b < 10; ++b) {
    for (int64_t id : s.batch_samples({0, b})) EXPECT_TRUE(seen.insert(id).second) << id;
  }
  EXPECT_EQ(seen.size(), 60u);
  EXPECT_NE(s.batch_samples({0, 0}), s.batch_samples({1, 0}));  // a new order each epoch
  GlobalSampler again(counting(10 * seq * 6 + 1), seq, 6, 42);
  EXPECT_EQ(s.batch_samples({3, 7}), again.batch_samples({3, 7}));  // pure function of (seed, e)
  GlobalSampler other_seed(counting(10 * seq * 6 + 1), seq, 6, 43);
  EXPECT_NE(s.batch_samples({0, 0}), other_seed.batch_samples({0, 0}));
}

TEST(GlobalSampler, WindowsGiveShiftedTargets) {
  GlobalSampler s(counting(100), 8, 2, 1, /*shuffle=*/false);
  Tensor tok = Tensor::empty({2, 8}, DType::i32), tgt = Tensor::empty({2, 8}, DType::i32);
  s.fill({0, 1}, 0, 2, tok, tgt);  // samples 2 and 3: tokens [16, 24] and [24, 32]
  EXPECT_EQ(tok.data<int32_t>()[0], 16);
  EXPECT_EQ(tgt.data<int32_t>()[0], 17);
  EXPECT_EQ(tgt.data<int32_t>()[7], 24);
  EXPECT_EQ(tok.data<int32_t>()[8], 24);
}

// Fine-tuning data (issue #25): a target whose token the loss mask leaves out is the ignore
// index; slices (the validation split) keep their part of the mask.
TEST(GlobalSampler, MaskedOutTargetsAreIgnored) {
  auto data = counting(100);
  std::vector<uint8_t> mask(100);
  for (size_t i = 0; i < mask.size(); ++i) mask[i] = i % 3 == 0 ? 1 : 0;
  data->set_mask(mask);
  GlobalSampler s(data, 8, 2, 1, /*shuffle=*/false);
  Tensor tok = Tensor::empty({2, 8}, DType::i32), tgt = Tensor::empty({2, 8}, DType::i32);
  s.fill({0, 1}, 0, 2, tok, tgt);  // samples 2 and 3: tokens 16.. and 24..
  for (int64_t r = 0; r < 2; ++r) {
    for (int64_t k = 0; k < 8; ++k) {
      const int32_t token = int32_t(16 + 8 * r + k), next = token + 1;
      EXPECT_EQ(tok.data<int32_t>()[r * 8 + k], token);  // inputs are never masked
      EXPECT_EQ(tgt.data<int32_t>()[r * 8 + k], next % 3 == 0 ? next : kIgnoreIndex);
    }
  }
  auto tail = TokenFile::slice(data, 10, 20);
  EXPECT_TRUE(tail->has_mask());
  EXPECT_TRUE(tail->trained(2) && !tail->trained(3));  // tokens 12 and 13
  EXPECT_NE(error_of([&] { counting(5)->set_mask({1, 0}); })
                .find("a loss mask of 2 values for 5 tokens"),
            std::string::npos);
  EXPECT_NE(error_of([&] { counting(2)->set_mask({1, 2}); })
                .find("loss mask value 2 at token 1"),
            std::string::npos);
}

// Any (world, micro-batch, accumulation) split of the same global batch covers it exactly.
TEST(DataLoader, RanksAndMicroBatchesPartitionTheGlobalBatch) {
  auto data = counting(64 * 9 + 1);  // 64 samples of 9
  const int64_t seq = 9, global = 8;
  std::vector<int32_t> reference;
  {
    DataLoader one(data, seq, global, 1, 1, 0, 5);
    Tensor tok = Tensor::empty({global, seq}, DType::i32), tgt = tok.clone();
    one.advance();  // global batch 1
    one.fill(0, tok, tgt);
    reference.assign(tok.data<int32_t>(), tok.data<int32_t>() + tok.numel());
  }
  for (auto [world, micro, accum] : {std::tuple{2, 4, 1}, {4, 1, 2}, {2, 2, 2}, {8, 1, 1}}) {
    std::vector<int32_t> got;
    for (int64_t r = 0; r < world; ++r) {
      DataLoader l(data, seq, micro, accum, world, r, 5);
      l.set_position({0, 1});
      Tensor tok = Tensor::empty({micro, seq}, DType::i32), tgt = tok.clone();
      for (int64_t m = 0; m < accum; ++m) {
        l.fill(m, tok, tgt);
        got.insert(got.end(), tok.data<int32_t>(), tok.data<int32_t>() + tok.numel());
      }
    }
    EXPECT_EQ(got, reference) << "world " << world << " micro " << micro << " accum " << accum;
  }
}

// A micro-batch's share of the global batch's loss is its count of targets that are not the
// ignore index, over the global batch's: counted here from what fill() hands the model.
TEST(DataLoader, MicroSharesAreCountedTargetsOverTheGlobalBatchsCount) {
  auto data = counting(64 * 9 + 1);
  std::vector<uint8_t> mask(size_t(data->size()));
  for (size_t i = 0; i < mask.size(); ++i) mask[i] = (i / 7) % 3 == 0;  // uneven in every window
  const int64_t seq = 9;
  {
    DataLoader plain(data, seq, 2, 2, 2, 1, 5);
    for (double x : plain.micro_shares()) EXPECT_EQ(x, 0.25);  // unmasked: all equal
  }
  data->set_mask(mask);
  for (auto [world, micro, accum] : {std::tuple{1, 8, 1}, {2, 2, 2}, {4, 1, 2}}) {
    std::vector<double> counted;  // each global micro-batch's targets that count, rank-major
    std::vector<double> shares;
    for (int64_t r = 0; r < world; ++r) {
      DataLoader l(data, seq, micro, accum, world, r, 5);
      l.set_position({0, 3});
      if (r == 0) shares = l.micro_shares();
      EXPECT_EQ(l.micro_shares(), shares) << "every rank computes every share";
      Tensor tok = Tensor::empty({micro, seq}, DType::i32), tgt = tok.clone();
      for (int64_t m = 0; m < accum; ++m) {
        l.fill(m, tok, tgt);
        const int32_t* t = tgt.data<int32_t>();
        counted.push_back(double(
            std::count_if(t, t + tgt.numel(), [](int32_t x) { return x != kIgnoreIndex; })));
      }
    }
    const double total = std::accumulate(counted.begin(), counted.end(), 0.0);
    ASSERT_EQ(shares.size(), counted.size());
    for (size_t j = 0; j < counted.size(); ++j) {
      EXPECT_DOUBLE_EQ(shares[j], counted[j] / total) << "micro-batch " << j;
    }
    if (micro == 1) {  // one sequence a micro-batch: the mask makes the shares differ
      EXPECT_NE(*std::min_element(shares.begin(), shares.end()),
                *std::max_element(shares.begin(), shares.end()));
    }
  }
}

TEST(GlobalSampler, TooLittleDataIsAClearError) {
  const std::string msg = error_of([] { GlobalSampler(counting(50), 16, 8, 1); });
  EXPECT_NE(msg.find("fewer than one global batch of 8"), std::string::npos) << msg;
}

}  // namespace
}  // namespace nuri
