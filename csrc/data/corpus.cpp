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
  return std::memcmp(head, "\x93NUMPY", 6) == 0 || magic == kTokenFileMagic;
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
             ": a ", ext, " file without llm.c's header (magic ", kTokenFileMagic,
             ") or .npy's; if it is a headerless token array (nanoGPT's prepare.py writes "
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
  const int64_t n_val = data->size() / 10;
  return {TokenFile::slice(data, 0, data->size() - n_val),
          TokenFile::slice(data, data->size() - n_val, n_val)};
}

double unigram_baseline(const TokenFile& train, const TokenFile& val, int64_t vocab_size) {
  std::vector<double> count(size_t(vocab_size), 1.0);
  for (int64_t i = 0; i < train.size(); ++i) count[train.at(i)] += 1.0;
  const double total = double(train.size() + vocab_size);
  double h = 0;
  for (int64_t i = 0; i < val.size(); ++i) h -= std::log(count[val.at(i)] / total);
  return h / double(val.size());
}

}  // namespace nuri
