// Token file parsing and validation (llm.c layout and .npy), mapped read-only with mmap.
#include "nuri/data/token_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "nuri/core/error.h"
#include "nuri/core/utf8.h"

namespace nuri {

namespace {

// A .npy dtype nuri reads tokens from: its element size and signedness.
struct NpyInt {
  int bytes;
  bool is_signed;
};

// Parses the header dict of a .npy file; sets the element type and count, or throws.
void parse_npy(const std::string& path, const char* base, size_t bytes, NpyInt* type, int64_t* n,
               int64_t* data_offset) {
  NURI_CHECK(bytes >= 10, path, ": ", bytes, " bytes is too short for a .npy header: truncated");
  const int major = static_cast<unsigned char>(base[6]);
  size_t header_len = 0, prefix = 0;
  if (major == 1) {
    header_len = size_t(static_cast<unsigned char>(base[8])) | size_t(static_cast<unsigned char>(base[9])) << 8;
    prefix = 10;
  } else if (major == 2 || major == 3) {
    NURI_CHECK(bytes >= 12, path, ": truncated .npy header");
    uint32_t len;
    std::memcpy(&len, base + 8, 4);
    header_len = len;
    prefix = 12;
  } else {
    NURI_CHECK(false, path, ": unsupported .npy format version ", major, " at offset 6");
  }
  NURI_CHECK(prefix + header_len <= bytes, path, ": .npy header of ", header_len,
             " bytes runs past the end of the file (", bytes, " bytes): truncated");
  const std::string header(base + prefix, header_len);
  auto field = [&](const std::string& key) -> std::string {
    const size_t k = header.find("'" + key + "'");
    NURI_CHECK(k != std::string::npos, path, ": .npy header has no '", key, "': ", header);
    size_t v = header.find(':', k) + 1;
    while (v < header.size() && header[v] == ' ') ++v;
    size_t end = v;
    if (header[v] == '(') {
      end = header.find(')', v) + 1;
    } else if (header[v] == '\'') {
      end = header.find('\'', v + 1) + 1;
    } else {
      while (end < header.size() && header[end] != ',' && header[end] != '}') ++end;
    }
    return header.substr(v, end - v);
  };
  const std::string descr = field("descr"), order = field("fortran_order"), shape = field("shape");
  static const std::pair<const char*, NpyInt> kTypes[] = {
      {"'|u1'", {1, false}}, {"'<u2'", {2, false}}, {"'<u4'", {4, false}}, {"'<u8'", {8, false}},
      {"'|i1'", {1, true}},  {"'<i2'", {2, true}},  {"'<i4'", {4, true}},  {"'<i8'", {8, true}}};
  const auto it = std::find_if(std::begin(kTypes), std::end(kTypes),
                               [&](const auto& t) { return descr == t.first; });
  NURI_CHECK(it != std::end(kTypes), path, ": .npy dtype ", descr,
             " is not an integer type (token ids are integers: uint8 to uint64 or int8 to int64, "
             "little-endian)");
  *type = it->second;
  NURI_CHECK(order == "False", path, ": .npy array must be in C order (fortran_order is ", order, ")");
  // "(N,)" is the only 1-D shape.
  int64_t count = -1;
  if (shape.size() > 3 && shape.front() == '(' && shape.substr(shape.size() - 2) == ",)") {
    std::istringstream is(shape.substr(1, shape.size() - 3));
    is >> count;
    if (!is.eof() && is.fail()) count = -1;
  }
  NURI_CHECK(count >= 0, path, ": .npy shape ", shape, " is not 1-D (tokens must be a flat array)");
  *n = count;
  *data_offset = int64_t(prefix + header_len);
}

// The header's token count must fit in the file (compared without multiplying: a count near
// 2^63 would overflow; fuzz_token_file found one).
void check_fits(const std::string& path, size_t bytes, int64_t offset, int64_t n, int64_t elem) {
  const int64_t room = (int64_t(bytes) - offset) / elem;
  NURI_CHECK(n <= room, path, ": the header promises ", n, " tokens of ", elem,
             " bytes after a ", offset, "-byte header, but the file has ", bytes,
             " bytes: truncated at token ", room);
}

}  // namespace

const char* TokenFile::map_file(const std::string& path) {
  path_ = path;
  const int fd = ::open(path.c_str(), O_RDONLY);
  NURI_CHECK(fd >= 0, "cannot open token file ", path, ": ", std::strerror(errno));
  struct stat st {};
  ::fstat(fd, &st);
  if (S_ISDIR(st.st_mode)) {
    ::close(fd);
    NURI_CHECK(false, path, " is a directory, not a token file");
  }
  const size_t bytes = size_t(st.st_size);
  if (bytes > 0) {
    map_ = ::mmap(nullptr, bytes, PROT_READ, MAP_PRIVATE, fd, 0);
  }
  ::close(fd);
  NURI_CHECK(bytes > 0, path, " is empty: not a token file");
  NURI_CHECK(map_ != MAP_FAILED, "cannot map ", path, ": ", std::strerror(errno));
  map_bytes_ = bytes;
  return static_cast<const char*>(map_);
}

std::shared_ptr<TokenFile> TokenFile::open_raw(const std::string& path, int width,
                                               int64_t vocab_size) {
  NURI_CHECK(width == 2 || width == 4, "open_raw: token width ", width,
             " bytes (2: uint16, 4: uint32)");
  std::shared_ptr<TokenFile> f(new TokenFile());
  f->in_file_ = true;
  const char* base = f->map_file(path);
  const int64_t bytes = int64_t(f->map_bytes_);
  // A file with a header read as raw tokens would train on its header, and on ids of the wrong
  // width (an llm.c uint32 file or a <u4 .npy file as uint16: every id followed by a 0).
  int32_t magic = 0;
  if (bytes >= 4) std::memcpy(&magic, base, 4);
  const bool npy = bytes >= 6 && std::memcmp(base, "\x93NUMPY", 6) == 0;
  NURI_CHECK(!npy && magic != kTokenFileMagic && magic != kTokenFileMagicWide, path,
             " starts with ",
             npy ? "a .npy header" : "the header of a token file (llm.c's .bin)",
             ", and data.format says headerless uint", 8 * width,
             " tokens; read it with data.format auto (or npy, llmc)");
  NURI_CHECK(bytes % width == 0, path, ": ", bytes, " bytes is not a whole number of uint",
             8 * width, " tokens (", bytes % width, " bytes left over): not a headerless uint",
             8 * width, " array, or truncated");
  f->wide_ = width == 4;
  f->file_elem_ = width;
  f->n_ = bytes / width;
  if (f->wide_) {
    f->data32_ = reinterpret_cast<const uint32_t*>(base);
  } else {
    f->data16_ = reinterpret_cast<const uint16_t*>(base);
  }
  if (vocab_size > 0) f->check_vocab(vocab_size);
  return f;
}

std::shared_ptr<TokenFile> TokenFile::open(const std::string& path, int64_t vocab_size) {
  std::shared_ptr<TokenFile> f(new TokenFile());
  f->in_file_ = true;
  const char* base = f->map_file(path);
  const size_t bytes = f->map_bytes_;
  int64_t elem = 2;
  if (bytes >= 6 && std::memcmp(base, "\x93NUMPY", 6) == 0) {
    NpyInt type{};
    parse_npy(path, base, bytes, &type, &f->n_, &f->data_offset_);
    elem = type.bytes;
    f->file_elem_ = elem;
    check_fits(path, bytes, f->data_offset_, f->n_, elem);
    // uint16 and uint32 are mapped in place when their data is aligned (NumPy pads the header to
    // 64 bytes; a file that does not is read like the other types: fuzz_token_file found the
    // misaligned load).
    if (type.is_signed || type.bytes == 1 || type.bytes == 8 || f->data_offset_ % elem != 0) {
      // Read and converted: each value must be a token id.
      f->owned_.resize(size_t(f->n_));
      const char* p = base + f->data_offset_;
      for (int64_t i = 0; i < f->n_; ++i, p += elem) {
        int64_t v = 0;
        uint64_t u = 0;
        switch (elem) {
          case 1: v = type.is_signed ? int64_t(int8_t(*p)) : int64_t(uint8_t(*p)); break;
          case 2: {
            uint16_t x;
            std::memcpy(&x, p, 2);
            v = type.is_signed ? int64_t(int16_t(x)) : int64_t(x);
            break;
          }
          case 4: {
            uint32_t x;
            std::memcpy(&x, p, 4);
            v = type.is_signed ? int64_t(int32_t(x)) : int64_t(x);
            break;
          }
          default:
            std::memcpy(&u, p, 8);
            v = type.is_signed ? int64_t(u) : 0;
        }
        const bool big = elem == 8 && !type.is_signed && u > 0xffffffffULL;
        NURI_CHECK(v >= 0 && !big && v <= int64_t(0xffffffff), path, ": value ",
                   elem == 8 && !type.is_signed ? std::to_string(u) : std::to_string(v),
                   " at index ", i, " (byte offset ", f->data_offset_ + i * elem,
                   ") is not a token id (ids are 0 to 2^32 - 1)");
        f->owned_[size_t(i)] = uint32_t(elem == 8 && !type.is_signed ? u : uint64_t(v));
      }
      f->wide_ = true;
      f->data32_ = f->owned_.data();
      // (data_offset_ and file_elem_ stay the file's: messages name its bytes)
      ::munmap(f->map_, f->map_bytes_);
      f->map_ = nullptr;
      if (vocab_size > 0) f->check_vocab(vocab_size);
      return f;
    }
    f->wide_ = elem == 4;
  } else {
    NURI_CHECK(int64_t(bytes) >= kTokenFileHeaderBytes, path, " is ", bytes,
               " bytes, shorter than the ", kTokenFileHeaderBytes,
               "-byte header of a token file: truncated, or not a token file");
    int32_t header[3];
    std::memcpy(header, base, sizeof(header));
    NURI_CHECK(header[0] == kTokenFileMagic || header[0] == kTokenFileMagicWide, path,
               ": bad magic ", header[0], " at offset 0 (a token file starts with ",
               kTokenFileMagic, " or ", kTokenFileMagicWide, "; .npy files start with \\x93NUMPY)");
    if (header[0] == kTokenFileMagic) {
      NURI_CHECK(header[1] == 1 || header[1] == 2, path, ": unsupported version ", header[1],
                 " at offset 4 (with magic ", kTokenFileMagic,
                 ": 1 = uint16 tokens, 2 = uint32 tokens)");
    } else {
      NURI_CHECK(header[1] == kTokenFileVersionWide, path, ": unsupported version ", header[1],
                 " at offset 4 (with magic ", kTokenFileMagicWide, ": ", kTokenFileVersionWide,
                 " = uint32 tokens)");
    }
    NURI_CHECK(header[2] >= 0, path, ": negative token count ", header[2], " at offset 8");
    f->wide_ = header[0] == kTokenFileMagicWide || header[1] == 2;
    f->n_ = header[2];
    f->data_offset_ = kTokenFileHeaderBytes;
    elem = f->wide_ ? 4 : 2;
    f->file_elem_ = elem;
    check_fits(path, bytes, f->data_offset_, f->n_, elem);
    // What llm.c's reader checks too: nothing after the counted tokens.
    const int64_t extra = int64_t(bytes) - f->data_offset_ - f->n_ * elem;
    NURI_CHECK(extra == 0, path, ": ", extra, " bytes follow the ", f->n_, " uint", 8 * elem,
               " tokens its header counts (a ", f->data_offset_ + f->n_ * elem,
               "-byte file): several token files joined into one (give their directory, or each "
               "one, instead), or a header naming another token width (",
               !f->wide_ && extra == f->n_ * elem ? "this file is the size uint32 tokens would "
                                                   "make; " : "",
               "magic ", kTokenFileMagicWide, " version ", kTokenFileVersionWide,
               " is llm.c's header for uint32 tokens)");
  }
  check_fits(path, bytes, f->data_offset_, f->n_, elem);
  if (f->wide_) {
    f->data32_ = reinterpret_cast<const uint32_t*>(base + f->data_offset_);
  } else {
    f->data16_ = reinterpret_cast<const uint16_t*>(base + f->data_offset_);
  }
  if (vocab_size > 0) f->check_vocab(vocab_size);
  return f;
}

std::shared_ptr<TokenFile> TokenFile::from_tokens(std::vector<uint32_t> tokens,
                                                  const std::string& name, int64_t vocab_size) {
  std::shared_ptr<TokenFile> f(new TokenFile());
  f->path_ = name;
  f->owned_ = std::move(tokens);
  f->wide_ = true;
  f->data32_ = f->owned_.data();
  f->n_ = int64_t(f->owned_.size());
  if (vocab_size > 0) f->check_vocab(vocab_size);
  return f;
}

std::shared_ptr<TokenFile> TokenFile::join(std::vector<std::shared_ptr<TokenFile>> parts,
                                           const std::string& name) {
  std::shared_ptr<TokenFile> f(new TokenFile());
  f->path_ = name;
  f->wide_ = true;
  int64_t checked = 0;
  bool first = true;
  for (auto& part : parts) {
    NURI_CHECK(part != nullptr, "TokenFile::join: a part of ", name, " is null");
    // The parts' common end-of-text, if they agree (-1 where they do not).
    f->end_of_text_ = first || f->end_of_text_ == part->end_of_text_ ? part->end_of_text_ : -1;
    first = false;
    if (part->size() == 0) continue;
    f->n_ += part->size();
    f->part_end_.push_back(f->n_);
    const int64_t below = part->checked_below_.load();
    checked = f->parts_.empty()              ? below
              : below == 0 || checked == 0 ? 0
                                           : std::max(checked, below);
    f->parts_.push_back(std::move(part));
  }
  f->checked_below_ = checked;
  return f;
}

uint32_t TokenFile::at_joined(int64_t i) const {
  if (parts_.empty()) return parent_->at(base_ + i);
  const size_t k = size_t(std::upper_bound(part_end_.begin(), part_end_.end(), i) -
                          part_end_.begin());
  return parts_[k]->at(i - (k == 0 ? 0 : part_end_[k - 1]));
}

std::shared_ptr<TokenFile> TokenFile::slice(std::shared_ptr<TokenFile> file, int64_t start,
                                            int64_t n) {
  // (n <= size - start: start + n would overflow for n near 2^63, a number Python may pass)
  NURI_CHECK(file != nullptr && start >= 0 && n >= 0 && start <= file->n_ &&
                 n <= file->n_ - start,
             "slice of ", n, " tokens at ", start, " is outside ",
             file ? file->path_ : "<null>", " (", file ? file->n_ : 0, " tokens)");
  std::shared_ptr<TokenFile> f(new TokenFile());
  f->path_ = file->path_ + "[" + std::to_string(start) + ":" + std::to_string(start + n) + "]";
  f->wide_ = file->wide_;
  f->data16_ = file->data16_ ? file->data16_ + start : nullptr;
  f->data32_ = file->data32_ ? file->data32_ + start : nullptr;
  f->mask_ = file->mask_ ? file->mask_ + start : nullptr;
  const int64_t w = file->packed_window_;
  f->packed_window_ = w > 0 && start % w == 0 ? w : 0;  // (elsewhere the rows' places shift)
  f->end_of_text_ = file->end_of_text_;
  f->data_offset_ = file->data_offset_ + start * file->file_elem_;
  f->file_elem_ = file->file_elem_;
  f->in_file_ = file->in_file_;
  if (file->joined()) f->base_ = start;  // read through the parent
  f->n_ = n;
  f->checked_below_ = file->checked_below_.load();
  f->parent_ = std::move(file);
  return f;
}

TokenFile::~TokenFile() {
  if (map_ && map_ != MAP_FAILED) ::munmap(map_, map_bytes_);
}

void TokenFile::check_vocab(int64_t vocab_size) const {
  const int64_t checked = checked_below_.load();
  if (checked > 0 && checked <= vocab_size) return;
  if (!parts_.empty()) {  // each part names its own file and offset
    for (const auto& part : parts_) part->check_vocab(vocab_size);
    checked_below_ = vocab_size;
    return;
  }
  for (int64_t i = 0; i < n_; ++i) {
    const uint32_t t = at(i);
    const std::string where = byte_offset_str(i);
    NURI_CHECK(int64_t(t) < vocab_size, path_, ": token id ", t, " at token index ", i,
               where.empty() ? where : " (" + where + ")", " is >= vocab_size ", vocab_size,
               "; the file was made with another tokenizer, or the model's vocab_size is too small");
  }
  checked_below_ = vocab_size;
}

std::string TokenFile::byte_offset_str(int64_t i) const {
  if (joined() || !in_file_) return "";
  return "byte offset " + std::to_string(data_offset_ + i * file_elem_);
}

void TokenFile::read(int64_t start, int64_t n, int32_t* out) const {
  NURI_CHECK(start >= 0 && n >= 0 && start <= n_ && n <= n_ - start, path_, ": read of ", n,
             " tokens at ", start, " past the end (", n_, " tokens)");
  if (!joined() || n == 0) {
    for (int64_t k = 0; k < n; ++k) out[k] = int32_t(at(start + k));
  } else if (parts_.empty()) {
    parent_->read(base_ + start, n, out);
  } else {  // part by part: one search a read, not one a token
    size_t k = size_t(std::upper_bound(part_end_.begin(), part_end_.end(), start) -
                      part_end_.begin());
    while (n > 0) {
      const int64_t lo = k == 0 ? 0 : part_end_[k - 1];
      const int64_t take = std::min(n, part_end_[k] - start);
      parts_[k]->read(start - lo, take, out);
      out += take, start += take, n -= take, ++k;
    }
  }
}

void TokenFile::set_mask(std::vector<uint8_t> mask) {
  NURI_CHECK(int64_t(mask.size()) == n_, path_, ": a loss mask of ", mask.size(),
             " values for ", n_, " tokens (one value a token)");
  for (size_t i = 0; i < mask.size(); ++i) {
    NURI_CHECK(mask[i] <= 1, path_, ": loss mask value ", int(mask[i]), " at token ", i,
               " (0: not trained on, 1: trained on)");
  }
  owned_mask_ = std::move(mask);
  mask_ = owned_mask_.data();
}

void TokenFile::set_packed_window(int64_t window) {
  NURI_CHECK(window >= 0, path_, ": a packed window of ", window, " tokens");
  packed_window_ = window;
}

uint32_t TokenFile::max_token() const {
  uint32_t m = 0;
  if (!parts_.empty()) {
    for (const auto& part : parts_) m = std::max(m, part->max_token());
    return m;
  }
  for (int64_t i = 0; i < n_; ++i) m = std::max(m, at(i));
  return m;
}

std::string TokenFile::fingerprint() const {
  // FNV-1a over 64-bit words, each word mixed first (splitmix64's finalizer) so that nearby
  // token ids spread over every bit.
  uint64_t h = 0xcbf29ce484222325ull;
  auto mix = [&h](uint64_t v) {
    v ^= v >> 30;
    v *= 0xbf58476d1ce4e5b9ull;
    v ^= v >> 27;
    v *= 0x94d049bb133111ebull;
    v ^= v >> 31;
    h = (h ^ v) * 0x100000001b3ull;
  };
  mix(uint64_t(n_));
  auto token = [&](int64_t i) { mix(uint64_t(at(i)) | (uint64_t(trained(i)) << 32)); };
  if (n_ <= kFingerprintWhole) {
    for (int64_t i = 0; i < n_; ++i) token(i);
  } else {  // the first and the last token included
    for (int64_t k = 0; k < kFingerprintSamples; ++k) {
      token(k * (n_ - 1) / (kFingerprintSamples - 1));  // < 2^63 below 2^47 tokens
    }
  }
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(h));
  return hex;
}

void write_token_file(const std::string& path, const std::vector<uint32_t>& tokens) {
  NURI_CHECK(tokens.size() < (size_t(1) << 31), "write_token_file: ", tokens.size(),
             " tokens do not fit the int32 count of the header; split the data into shards");
  const bool wide = std::any_of(tokens.begin(), tokens.end(), [](uint32_t t) { return t > 0xffff; });
  int32_t header[256] = {};
  header[0] = wide ? kTokenFileMagicWide : kTokenFileMagic;
  header[1] = wide ? kTokenFileVersionWide : 1;
  header[2] = int32_t(tokens.size());
  struct stat st{};
  NURI_CHECK(::stat(path.c_str(), &st) != 0 || !S_ISDIR(st.st_mode), "write_token_file: ", path,
             " is a directory; give the token file's path (e.g. ", path, "/train.bin)");
  const std::string tmp = path + ".tmp";
  struct RemoveOnError {  // a failed write leaves no partial file behind
    const std::string& tmp;
    ~RemoveOnError() {
      if (std::uncaught_exceptions() > 0) std::remove(tmp.c_str());
    }
  } remove_on_error{tmp};
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    NURI_CHECK(out.good(), "cannot write ", tmp, ": ", std::strerror(errno));
    out.write(reinterpret_cast<const char*>(header), sizeof(header));
    if (wide) {
      out.write(reinterpret_cast<const char*>(tokens.data()), std::streamsize(tokens.size() * 4));
    } else {
      std::vector<uint16_t> narrow(tokens.begin(), tokens.end());
      out.write(reinterpret_cast<const char*>(narrow.data()), std::streamsize(narrow.size() * 2));
    }
    NURI_CHECK(out.good(), "writing ", tmp, " failed: ", std::strerror(errno));
  }
  NURI_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0, "cannot rename ", tmp, " to ", path,
             ": ", std::strerror(errno));
}

std::vector<uint32_t> ByteTokenizer::encode(const std::string& text) const {
  std::vector<uint32_t> out(text.size());
  for (size_t i = 0; i < text.size(); ++i) out[i] = static_cast<unsigned char>(text[i]);
  return out;
}

std::string ByteTokenizer::decode(const std::vector<int32_t>& tokens) const {
  std::string s;
  for (int32_t t : tokens) {
    if (t == int32_t(kEndOfText)) {
      s += "\n<|endoftext|>\n";
    } else if (t >= 0 && t < 256) {
      s += char(t);
    }
  }
  return s;
}

std::string valid_utf8(const std::string& bytes) {
  // An ill-formed sequence is replaced up to its longest valid prefix (at least one byte), as
  // Python's errors="replace" does.
  std::string out;
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  for (size_t i = 0; i < bytes.size();) {
    const Utf8Sequence q = utf8_sequence(p + i, bytes.size() - i);
    if (q.length > 0 && q.valid == q.length) {
      out.append(bytes, i, size_t(q.length));
      i += size_t(q.length);
    } else {
      out += "\xEF\xBF\xBD";  // U+FFFD
      i += size_t(std::max(q.valid, 1));
    }
  }
  return out;
}

int64_t text_file_to_tokens(const std::string& text_path, const std::string& token_path) {
  std::error_code ec;
  NURI_CHECK(!std::filesystem::equivalent(text_path, token_path, ec), "the token file ",
             token_path, " is the text file it is made from, which it would replace; name "
             "another output file");
  std::ifstream in(text_path, std::ios::binary);
  NURI_CHECK(in.good(), "cannot open text file ", text_path, ": ", std::strerror(errno));
  std::stringstream ss;
  ss << in.rdbuf();
  std::vector<uint32_t> tokens = ByteTokenizer().encode(ss.str());
  tokens.push_back(ByteTokenizer::kEndOfText);
  write_token_file(token_path, tokens);
  return int64_t(tokens.size());
}

}  // namespace nuri
