// A run's data from a path, the default corpus, the validation split and the unigram baseline
// (nuri/data/corpus.h).
#include "nuri/data/corpus.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/json_checked.h"
#include "nuri/core/error.h"
#include "nuri/core/rng.h"

namespace nuri {

namespace fs = std::filesystem;

bool is_token_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char head[6] = {};
  in.read(head, 6);
  int32_t magic = 0;
  std::memcpy(&magic, head, 4);
  return std::memcmp(head, "\x93NUMPY", 6) == 0 || magic == kTokenFileMagic ||
         magic == kTokenFileMagicWide;
}

const std::vector<std::string>& data_formats() {
  static const std::vector<std::string> f{"auto", "text", "llmc", "npy", "uint16", "uint32"};
  return f;
}

std::shared_ptr<TokenFile> read_data(const std::string& path, int64_t vocab_size,
                                     std::string* description, const std::string& format) {
  const auto& formats = data_formats();
  if (std::find(formats.begin(), formats.end(), format) == formats.end()) {
    std::string list;
    for (const auto& f : formats) list += (list.empty() ? "" : ", ") + f;
    NURI_CHECK(false, "data format '", format, "' is not one of ", list);
  }
  if (is_shard_dir(path)) {
    NURI_CHECK(format == "auto" || format == "llmc", path, ": a directory of nuri tokenize's "
               "shards is read in format auto (or llmc), not '", format, "'");
    auto f = read_shards(path, "train", vocab_size, description);
    NURI_CHECK(f != nullptr, path, ": tokenize.json lists no train shards");
    return f;
  }
  std::error_code ec;
  NURI_CHECK(!fs::is_directory(path, ec), path, " is a directory without a tokenize.json: name a "
             "file (text or tokens), or a directory that nuri tokenize wrote (nuri tokenize "
             "FILES --out DIR)");
  std::ifstream in(path, std::ios::binary);
  NURI_CHECK(in.good(), "cannot open data file ", path, ": ", std::strerror(errno));
  auto tokens = [&](std::shared_ptr<TokenFile> f) {
    if (description) *description = path + " (" + std::to_string(f->size()) + " tokens)";
    return f;
  };
  if (format == "uint16" || format == "uint32") {
    return tokens(TokenFile::open_raw(path, format == "uint16" ? 2 : 4, vocab_size));
  }
  if (format == "llmc" || format == "npy" || (format == "auto" && is_token_file(path))) {
    auto f = TokenFile::open(path, vocab_size);  // the header says which; checked below
    char head[6] = {};
    in.read(head, 6);
    const bool npy = std::memcmp(head, "\x93NUMPY", 6) == 0;
    NURI_CHECK(format == "auto" || npy == (format == "npy"), path, ": data format '", format,
               "' was given, but the file is ", npy ? "a .npy array" : "an llm.c token file");
    return tokens(f);
  }
  const std::string ext = fs::path(path).extension().string();
  NURI_CHECK(format == "text" || (ext != ".bin" && ext != ".npy"), path,
             ": a ", ext, " file without llm.c's header (magic ", kTokenFileMagic, " or ",
             kTokenFileMagicWide, ") or .npy's; if it is a headerless token array (nanoGPT's prepare.py writes "
             "uint16 ones), say so with data.format = \"uint16\" (or \"uint32\"); if it is "
             "text, data.format = \"text\"");
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  if (description) {
    *description = path + " (" + std::to_string(text.size()) + " bytes of text, byte tokens)";
  }
  return TokenFile::from_tokens(ByteTokenizer().encode(text), path, vocab_size);
}

bool is_shard_dir(const std::string& path) {
  std::error_code ec;
  return fs::is_directory(path, ec) && fs::is_regular_file(fs::path(path) / "tokenize.json", ec);
}

namespace {

// read_shards over tokenize.json parsed: nlohmann's exceptions (a field of the wrong type) are
// turned into one message by the caller.
std::shared_ptr<TokenFile> read_listed_shards(const std::string& dir, const std::string& split,
                                              int64_t vocab_size, std::string* description,
                                              const nlohmann::json& meta,
                                              const std::string& meta_path) {
  NURI_CHECK(meta.is_object() && meta.contains("shards") && meta["shards"].is_object() &&
                 meta.contains("tokenizer") && meta["tokenizer"].is_object() &&
                 meta["tokenizer"].contains("vocab_size") &&
                 json_checked::integer(meta["tokenizer"]["vocab_size"]) > 0,
             meta_path, ": needs \"shards\" and a \"tokenizer\" with its vocab_size (nuri "
             "tokenize writes both)");
  const nlohmann::json& tok = meta["tokenizer"];
  const int64_t tok_vocab = json_checked::integer(tok["vocab_size"]);
  const std::string tok_name =
      tok.value("kind", std::string("?")) == "bytes"
          ? std::string("byte tokenizer")
          : fs::path(tok.value("path", std::string("tokenizer.json"))).filename().string();
  NURI_CHECK(vocab_size <= 0 || tok_vocab <= vocab_size, dir, ": the shards were written by ",
             tok_name, ", whose vocabulary has ", tok_vocab, " ids, more than the model's "
             "vocab_size ", vocab_size, "; train a model with vocab_size >= ", tok_vocab,
             " or tokenize with the model's tokenizer");
  if (!meta["shards"].contains(split)) return nullptr;
  std::vector<std::shared_ptr<TokenFile>> parts;  // each shard mapped, none copied
  std::vector<int64_t> sizes;  // each shard's tokens, for its mask
  int64_t count = 0, tokens = 0;
  for (const auto& name : meta["shards"][split]) {
    NURI_CHECK(name.is_string() && fs::path(name.get<std::string>()).filename() == name.get<std::string>(),
               meta_path, ": shard names are file names in the directory");
    auto f = TokenFile::open((fs::path(dir) / name.get<std::string>()).string(), vocab_size);
    sizes.push_back(f->size());
    tokens += f->size();
    parts.push_back(std::move(f));
    ++count;
  }
  if (count == 0) return nullptr;
  // Fine-tuning data: a loss mask (.npy of 0/1, one value a token) beside each shard.
  std::vector<uint8_t> mask;
  const bool masked = meta.contains("masks") && meta["masks"].is_object() &&
                      meta["masks"].contains(split);
  if (masked) {
    NURI_CHECK(meta["masks"][split].size() == meta["shards"][split].size(), meta_path,
               ": one mask file a shard is needed (", meta["masks"][split].size(), " masks, ",
               meta["shards"][split].size(), " shards)");
    size_t k = 0;
    for (const auto& name : meta["masks"][split]) {
      NURI_CHECK(name.is_string() &&
                     fs::path(name.get<std::string>()).filename() == name.get<std::string>(),
                 meta_path, ": mask names are file names in the directory");
      // (opened as token ids of no vocabulary: its values are checked below, as a mask's)
      auto m = TokenFile::open((fs::path(dir) / name.get<std::string>()).string(), 0);
      // Each mask against its own shard: one short and a later one long would shift the bits.
      NURI_CHECK(m->size() == sizes[k], meta_path, ": mask ", name.get<std::string>(), " has ",
                 m->size(), " values, its shard ", meta["shards"][split][k].get<std::string>(),
                 " ", sizes[k], " tokens; tokenize the data again");
      ++k;
      for (int64_t i = 0; i < m->size(); ++i) {
        const uint32_t v = m->at(i);
        NURI_CHECK(v <= 1, (fs::path(dir) / name.get<std::string>()).string(), ": loss mask value ",
                   v, " at index ", i, " (", m->byte_offset_str(i), "; 0: not trained on, 1: "
                   "trained on): the file is corrupted; tokenize the data again");
        mask.push_back(uint8_t(v));
      }
    }
  }
  if (description) {
    *description = dir + ": " + std::to_string(count) + " " + split + " shard" +
                   (count == 1 ? "" : "s") + " (" + std::to_string(tokens) + " tokens, " +
                   tok_name + (masked ? ", loss mask" : "") + ")";
  }
  auto f = TokenFile::join(std::move(parts), dir + " (" + split + ")");
  if (vocab_size > 0) f->check_vocab(vocab_size);  // the parts were: returns at once
  if (masked) f->set_mask(std::move(mask));
  if (meta.contains("pack") && !meta["pack"].is_null()) {  // tokenize --pack T
    const int64_t window = json_checked::integer(meta["pack"]);
    NURI_CHECK(window > 0, meta_path, ": pack ", window, " is not a sequence length");
    f->set_packed_window(window);
  }
  if (tok.contains("eot") && !tok["eot"].is_null()) {
    const int64_t eot = json_checked::integer(tok["eot"]);
    NURI_CHECK(eot >= 0 && eot < tok_vocab, meta_path, ": the tokenizer's end-of-text id ", eot,
               " is outside its vocabulary of ", tok_vocab, " ids; tokenize the data again");
    f->set_end_of_text(eot);
  }
  return f;
}

}  // namespace

std::shared_ptr<TokenFile> read_shards(const std::string& dir, const std::string& split,
                                       int64_t vocab_size, std::string* description) {
  const std::string meta_path = (fs::path(dir) / "tokenize.json").string();
  try {
    std::ifstream in(meta_path);
    const nlohmann::json meta = json_checked::parse(in);
    return read_listed_shards(dir, split, vocab_size, description, meta, meta_path);
  } catch (const nlohmann::json::exception& e) {
    NURI_CHECK(false, meta_path, ": not tokenize.json as nuri tokenize writes it (", e.what(), ")");
  }
}

void check_shard_tokenizer(const std::string& dir, const std::string& tokenizer,
                           const std::string& sha256) {
  const std::string meta_path = (fs::path(dir) / "tokenize.json").string();
  nlohmann::json tok;
  try {
    std::ifstream in(meta_path);
    tok = json_checked::parse(in).at("tokenizer");
  } catch (const nlohmann::json::exception& e) {
    NURI_CHECK(false, meta_path, ": no tokenizer record (", e.what(), "); write the shards "
               "again with nuri tokenize");
  }
  const auto text = [&](const char* key) {
    return tok.is_object() && tok.contains(key) && tok[key].is_string()
               ? tok[key].get<std::string>()
               : std::string();
  };
  const bool bytes = text("kind") == "bytes";
  const std::string wrote =
      bytes ? std::string("the byte tokenizer")
            : text("path") + " (SHA-256 " + text("sha256").substr(0, 12) + "…)";
  const bool same = tokenizer == "bytes" ? bytes : !bytes && text("sha256") == sha256;
  NURI_CHECK(same, dir, ": these shards were written by ", wrote, ", but data.tokenizer is ",
             tokenizer == "bytes" ? std::string("the byte tokenizer")
                                  : tokenizer + " (SHA-256 " + sha256.substr(0, 12) + "…)",
             "; the token ids would mean other text to the model. Tokenize the data again with "
             "the model's tokenizer (nuri tokenize --tokenizer ...), or set data.tokenizer to "
             "the one that wrote them");
}

std::shared_ptr<TokenFile> default_corpus(std::string* description) {
  const fs::path dir = "/usr/share/common-licenses";
  std::vector<fs::path> files;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (e.is_regular_file() && !e.is_symlink()) files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  std::string text;
  for (const auto& f : files) {
    std::ifstream in(f, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    text += ss.str() + "\n";
  }
  std::string what = dir.string() + " (" + std::to_string(files.size()) + " files)";
  if (text.size() <= 100000) {  // elsewhere: sentences drawn from a small grammar, fixed seed
    static const char* subj[] = {"the student", "a small model", "the cluster", "our lab",
                                 "the GPU"};
    static const char* verb[] = {"trains", "waits for", "checkpoints", "measures", "resumes"};
    static const char* obj[] = {"the loss curve", "a preempted job", "every token", "the gradient",
                                "its allocation"};
    static const char* tail[] = {" at night.", " again.", " without a download.", " on two cores.",
                                 "."};
    Philox rng(42, stream_id("demo/corpus"));
    text.clear();
    for (uint64_t i = 0; text.size() < 300000; ++i) {
      const u32x4 r = rng.block(i);
      text += std::string(subj[r[0] % 5]) + " " + verb[r[1] % 5] + " " + obj[r[2] % 5] +
              tail[r[3] % 5] + (r[3] % 7 == 0 ? "\n" : " ");
    }
    what = "generated corpus (no /usr/share/common-licenses here)";
  }
  if (description) *description = what;
  return TokenFile::from_tokens(ByteTokenizer().encode(text), "default corpus");
}

std::pair<std::shared_ptr<TokenFile>, std::shared_ptr<TokenFile>> split_validation(
    const std::shared_ptr<TokenFile>& data) {
  NURI_CHECK(data != nullptr, "split_validation: no data (None) to split");
  if (const int64_t w = data->packed_window(); w > 0 && data->size() > w) {
    // Packed rows (tokenize --pack): the last tenth of the windows, split where one starts so
    // that both halves keep the packing (the token there is the train half's last target too).
    const int64_t windows = (data->size() - 1) / w, val = std::max<int64_t>(1, windows / 10);
    const int64_t cut = (windows - val) * w;
    return {TokenFile::slice(data, 0, cut + 1), TokenFile::slice(data, cut, data->size() - cut)};
  }
  const int64_t n_val = data->size() / 10;
  return {TokenFile::slice(data, 0, data->size() - n_val),
          TokenFile::slice(data, data->size() - n_val, n_val)};
}

namespace {

// fn(index, token) for every token of f, or, above kBaselineWhole tokens, for those of
// kBaselineRuns evenly spaced runs of kBaselineRun tokens (a startup reading 2^24 tokens at
// most, however large the data). Returns how many tokens fn saw.
constexpr int64_t kBaselineWhole = int64_t(1) << 24, kBaselineRun = int64_t(1) << 16,
                  kBaselineRuns = kBaselineWhole / kBaselineRun;
template <class F>
int64_t for_each_sampled(const TokenFile& f, F&& fn) {
  const int64_t n = f.size();
  const int64_t runs = n <= kBaselineWhole ? 1 : kBaselineRuns;
  const int64_t len = n <= kBaselineWhole ? n : kBaselineRun;
  std::vector<int32_t> buf(static_cast<size_t>(std::min(len, kBaselineRun)));
  for (int64_t r = 0; r < runs; ++r) {
    const int64_t start = runs == 1 ? 0 : r * ((n - len) / (runs - 1));
    for (int64_t at = 0; at < len; at += kBaselineRun) {  // a run at most in memory
      const int64_t m = std::min(kBaselineRun, len - at);
      f.read(start + at, m, buf.data());
      for (int64_t k = 0; k < m; ++k) fn(start + at + k, uint32_t(buf[size_t(k)]));
    }
  }
  return runs * len;
}

}  // namespace

double unigram_baseline(const TokenFile& train, const TokenFile& val, int64_t vocab_size) {
  // With a loss mask only the trained tokens count, on both sides: the validation loss scores
  // those alone (the prompts and a packing's pads are no targets of it).
  std::vector<double> count(size_t(vocab_size), 1.0);
  int64_t seen = 0, scored = 0;
  for_each_sampled(train, [&](int64_t i, uint32_t t) {
    if (train.trained(i)) count[t] += 1.0, ++seen;
  });
  const double total = double(seen + vocab_size);
  double h = 0;
  for_each_sampled(val, [&](int64_t i, uint32_t t) {
    if (val.trained(i)) h -= std::log(count[t] / total), ++scored;
  });
  return scored ? h / double(scored) : std::nan("");
}

}  // namespace nuri
