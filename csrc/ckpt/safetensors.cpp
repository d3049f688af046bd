// safetensors reading and writing, fsynced file writes with SHA-256 on the way, and the crash
// points of the fault-injection tests.
#include "nuri/ckpt/safetensors.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>

#include "core/json_checked.h"
#include "nuri/core/error.h"

namespace nuri {

namespace ckpt {

namespace {
std::atomic<int64_t> g_points{0};
int64_t crash_at() {
  static const int64_t k = [] {
    const char* e = std::getenv("NURI_CKPT_CRASH_AT");
    return e && *e ? std::atoll(e) : int64_t(0);
  }();
  return k;
}
}  // namespace

void crash_point(const char* what) {
  const int64_t n = ++g_points;
  if (crash_at() > 0 && n == crash_at()) {
    std::fprintf(stderr, "nuri: NURI_CKPT_CRASH_AT=%lld: killed at crash point %lld (%s)\n",
                 (long long)n, (long long)n, what);
    std::fflush(stderr);
    std::raise(SIGKILL);
  }
}

int64_t crash_points_passed() { return g_points.load(); }

}  // namespace ckpt

namespace {

std::string hex(const unsigned char* d, unsigned n) {
  static const char* digits = "0123456789abcdef";
  std::string s;
  for (unsigned i = 0; i < n; ++i) {
    s += digits[d[i] >> 4];
    s += digits[d[i] & 15];
  }
  return s;
}

EVP_MD_CTX* new_sha() {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  NURI_CHECK(ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr) == 1,
             "SHA-256: OpenSSL could not start a digest");
  return ctx;
}

std::string finish_sha(EVP_MD_CTX* ctx) {
  unsigned char d[EVP_MAX_MD_SIZE];
  unsigned n = 0;
  EVP_DigestFinal_ex(ctx, d, &n);
  EVP_MD_CTX_free(ctx);
  return hex(d, n);
}

constexpr size_t kChunk = size_t(1) << 20;  // bytes per write (and per crash point)

}  // namespace

// ---- FileWriter -------------------------------------------------------------------------------

FileWriter::FileWriter(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
  NURI_CHECK(fd_ >= 0, "cannot create ", path, ": ", std::strerror(errno));
  sha_ = new_sha();
}

FileWriter::~FileWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (sha_) EVP_MD_CTX_free(static_cast<EVP_MD_CTX*>(sha_));
}

void FileWriter::write(const void* data, size_t bytes) {
  NURI_CHECK(fd_ >= 0, "write to ", path_, " after close");
  const char* p = static_cast<const char*>(data);
  while (bytes > 0) {
    const size_t n = std::min(bytes, kChunk);
    ckpt::crash_point("write");
    size_t done = 0;
    while (done < n) {
      const ssize_t k = ::write(fd_, p + done, n - done);
      if (k < 0 && errno == EINTR) continue;
      NURI_CHECK(k > 0, "writing ", path_, " failed after ", bytes_ + int64_t(done), " bytes: ",
                 std::strerror(errno), " (is the disk full?)");
      done += size_t(k);
    }
    EVP_DigestUpdate(static_cast<EVP_MD_CTX*>(sha_), p, n);
    bytes_ += int64_t(n);
    p += n;
    bytes -= n;
  }
}

void FileWriter::overwrite(int64_t offset, const void* data, size_t bytes) {
  NURI_CHECK(fd_ >= 0 && offset >= 0 && offset + int64_t(bytes) <= bytes_, "overwrite of bytes [",
             offset, ", ", offset + int64_t(bytes), ") of ", path_, ", which has ", bytes_,
             fd_ >= 0 ? " written" : " written and is closed");
  ckpt::crash_point("write");
  size_t done = 0;
  while (done < bytes) {
    const ssize_t k = ::pwrite(fd_, static_cast<const char*>(data) + done, bytes - done,
                               off_t(offset + int64_t(done)));
    if (k < 0 && errno == EINTR) continue;
    NURI_CHECK(k > 0, "writing ", path_, " failed: ", std::strerror(errno));
    done += size_t(k);
  }
}

std::string FileWriter::close() {
  NURI_CHECK(fd_ >= 0, "close of ", path_, " twice");
  ckpt::crash_point("fsync");
  NURI_CHECK(::fsync(fd_) == 0, "fsync of ", path_, " failed: ", std::strerror(errno));
  NURI_CHECK(::close(fd_) == 0, "close of ", path_, " failed: ", std::strerror(errno));
  fd_ = -1;
  const std::string digest = finish_sha(static_cast<EVP_MD_CTX*>(sha_));
  sha_ = nullptr;
  return digest;
}

std::string sha256_hex(const std::string& bytes) {
  EVP_MD_CTX* ctx = new_sha();
  EVP_DigestUpdate(ctx, bytes.data(), bytes.size());
  return finish_sha(ctx);
}

std::string sha256_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  NURI_CHECK(in.good(), "cannot open ", path, " to check its SHA-256");
  EVP_MD_CTX* ctx = new_sha();
  std::vector<char> buf(kChunk);
  while (in) {
    in.read(buf.data(), std::streamsize(buf.size()));
    if (in.gcount() > 0) EVP_DigestUpdate(ctx, buf.data(), size_t(in.gcount()));
  }
  return finish_sha(ctx);
}

// ---- dtypes -------------------------------------------------------------------------------------

const char* safetensors_dtype(DType t) {
  switch (t) {
    case DType::f32: return "F32";
    case DType::bf16: return "BF16";
    case DType::f16: return "F16";
    case DType::i32: return "I32";
    case DType::i64: return "I64";
    default: break;
  }
  NURI_CHECK(false, "safetensors: nuri does not write ", dtype_name(t), " tensors");
}

int64_t other_safetensors_dtype_size(const std::string& s) {
  if (s == "BOOL" || s == "U8" || s == "I8" || s == "F8_E5M2" || s == "F8_E4M3") return 1;
  if (s == "U16" || s == "I16") return 2;
  if (s == "U32") return 4;
  if (s == "U64" || s == "F64") return 8;
  return 0;
}

DType dtype_from_safetensors(const std::string& s, const std::string& where) {
  if (s == "F32") return DType::f32;
  if (s == "BF16") return DType::bf16;
  if (s == "F16") return DType::f16;
  if (s == "I32") return DType::i32;
  if (s == "I64") return DType::i64;
  NURI_CHECK(false, where, ": dtype '", s, "' is not one nuri reads (F32, BF16, F16, I32, I64)");
}

// ---- writing ------------------------------------------------------------------------------------

namespace {
// How NumPy names a dtype (numpy.dtype.str), which the tensor checksum hashes.
const char* numpy_dtype_str(DType t) {
  switch (t) {
    case DType::f32: return "<f4";
    case DType::f16: return "<f2";
    case DType::i32: return "<i4";
    case DType::i64: return "<i8";
    default: return nullptr;
  }
}

// What the tensor checksum hashes ahead of a tensor's bytes: "NAME|DTYPE|[d0, d1]|".
void hash_tensor_head(EVP_MD_CTX* ctx, const std::string& name, DType dtype, const Shape& shape) {
  std::string head = name + "|" + numpy_dtype_str(dtype) + "|[";
  for (size_t d = 0; d < shape.size(); ++d) head += (d ? ", " : "") + std::to_string(shape[d]);
  head += "]|";
  EVP_DigestUpdate(ctx, head.data(), head.size());
}
}  // namespace

SafetensorsStreamWriter::SafetensorsStreamWriter(const std::string& path,
                                                 std::vector<SafetensorsPlanned> tensors,
                                                 const std::map<std::string, std::string>& metadata,
                                                 bool checksum)
    : path_(path), planned_(std::move(tensors)) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  const std::string placeholder(64, '0');
  std::map<std::string, std::string> meta = metadata;
  if (checksum) {
    for (size_t i = 0; i < planned_.size(); ++i) {
      NURI_CHECK(i == 0 || planned_[i - 1].name < planned_[i].name, "safetensors ", path,
                 ": a checksummed file's tensors are written in name order, and '",
                 planned_[i].name, "' comes after '", planned_[i - 1].name, "'");
      NURI_CHECK(numpy_dtype_str(planned_[i].dtype), "safetensors ", path, ": tensor '",
                 planned_[i].name, "' is ", dtype_name(planned_[i].dtype),
                 ", which the tensor checksum does not cover (NumPy has no such type)");
    }
    meta[kTensorsChecksumKey] = placeholder;  // its digits are written at close()
    checksum_ = new_sha();
  }
  if (!meta.empty()) header["__metadata__"] = meta;
  int64_t at = 0;
  for (const auto& [name, dtype, shape] : planned_) {
    NURI_CHECK(name != "__metadata__" && !header.contains(name), "safetensors ", path,
               ": tensor name '", name, "' is reserved or used twice");
    const int64_t bytes = shape_numel(shape) * int64_t(dtype_size(dtype));
    nlohmann::ordered_json e;
    e["dtype"] = safetensors_dtype(dtype);
    e["shape"] = shape;
    e["data_offsets"] = {at, at + bytes};
    header[name] = e;
    at += bytes;
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');  // the data starts 8-byte aligned
  if (checksum) {
    const std::string field = std::string("\"") + kTensorsChecksumKey + "\":\"" + placeholder;
    const size_t at = h.find(field);
    NURI_CHECK(at != std::string::npos, "safetensors ", path, ": no room for the checksum");
    checksum_offset_ = 8 + int64_t(at + field.size() - placeholder.size());
  }
  const uint64_t n = h.size();
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(n >> (8 * i));
  file_ = std::make_unique<FileWriter>(path);
  file_->write(len, 8);
  file_->write(h.data(), h.size());
}

SafetensorsStreamWriter::~SafetensorsStreamWriter() {
  if (checksum_) EVP_MD_CTX_free(static_cast<EVP_MD_CTX*>(checksum_));
}

void SafetensorsStreamWriter::write(const std::string& name, const Tensor& host) {
  NURI_CHECK(next_ < planned_.size(), "safetensors ", path_, ": '", name, "' is one tensor more "
             "than the ", planned_.size(), " planned");
  const SafetensorsPlanned& p = planned_[next_];
  NURI_CHECK(name == p.name && host.defined() && host.device().is_cpu() &&
                 host.is_contiguous() && host.dtype() == p.dtype && host.shape() == p.shape,
             "safetensors ", path_, ": tensor ", next_, " must be '", p.name, "' ",
             dtype_name(p.dtype), " ", shape_str(p.shape), " (a contiguous host tensor), got '",
             name, "' ", host.defined() ? host.str() : std::string("undefined"));
  file_->write(host.raw(), host.nbytes());
  if (checksum_) {
    auto* ctx = static_cast<EVP_MD_CTX*>(checksum_);
    hash_tensor_head(ctx, p.name, p.dtype, p.shape);
    EVP_DigestUpdate(ctx, host.raw(), host.nbytes());
  }
  ++next_;
}

std::string SafetensorsStreamWriter::close() {
  NURI_CHECK(next_ == planned_.size(), "safetensors ", path_, ": ", next_, " of the ",
             planned_.size(), " planned tensors were written");
  if (!checksum_) return file_->close();
  const std::string digest = finish_sha(static_cast<EVP_MD_CTX*>(checksum_));
  checksum_ = nullptr;
  file_->overwrite(checksum_offset_, digest.data(), digest.size());
  file_->close();
  return digest;
}

std::string write_safetensors(const std::string& path,
                              const std::vector<std::pair<std::string, Tensor>>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  std::vector<SafetensorsPlanned> planned;
  for (const auto& [name, t] : tensors) {
    NURI_CHECK(t.defined() && t.device().is_cpu() && t.is_contiguous(), "write_safetensors(",
               path, "): tensor '", name, "' must be a contiguous host tensor");
    planned.push_back({name, t.dtype(), t.shape()});
  }
  SafetensorsStreamWriter w(path, std::move(planned), metadata);
  for (const auto& [name, t] : tensors) w.write(name, t);
  return w.close();
}

// ---- reading ------------------------------------------------------------------------------------

// The open file of a SafetensorsFile and its copies.
struct SafetensorsFile::Stream {
  std::mutex mutex;
  std::ifstream in;
};

void SafetensorsFile::close() const {
  const std::lock_guard<std::mutex> lock(stream_->mutex);
  if (stream_->in.is_open()) stream_->in.close();
}

SafetensorsFile::SafetensorsFile(const std::string& path)
    : stream_(std::make_shared<Stream>()), path_(path) {
  // (A directory opens as a stream whose size is nonsense: fuzz_hf.py found one named by an
  // index entry "".)
  std::error_code ec;
  NURI_CHECK(!std::filesystem::exists(path, ec) || std::filesystem::is_regular_file(path, ec),
             path, ": not a file (a safetensors file was expected)");
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  NURI_CHECK(in.good(), path, ": cannot open (", std::strerror(errno), ")");
  file_bytes_ = int64_t(in.tellg());
  NURI_CHECK(file_bytes_ >= 8, path, ": ", file_bytes_,
             " bytes is too short for a safetensors file (truncated?)");
  in.seekg(0);
  unsigned char len[8];
  in.read(reinterpret_cast<char*>(len), 8);
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= uint64_t(len[i]) << (8 * i);
  NURI_CHECK(n > 0 && n <= uint64_t(file_bytes_ - 8), path, ": the header claims ", n,
             " bytes but the file has ", file_bytes_ - 8, " after the length (truncated or not "
             "a safetensors file)");
  std::string h(n, '\0');
  in.read(h.data(), std::streamsize(n));
  NURI_CHECK(in.gcount() == std::streamsize(n), path, ": the file ended inside its header");
  data_start_ = 8 + int64_t(n);
  nlohmann::json header;
  try {
    header = json_checked::parse(h);
  } catch (const std::exception& e) {
    NURI_CHECK(false, path, ": the header is not valid JSON (", e.what(), ")");
  }
  NURI_CHECK(header.is_object(), path, ": the header is not a JSON object");
  std::vector<std::pair<int64_t, std::string>> spans;
  std::vector<int64_t> ends;
  const int64_t data_bytes = file_bytes_ - data_start_;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      NURI_CHECK(it->is_object(), path, ": __metadata__ must be an object of strings");
      for (auto m = it->begin(); m != it->end(); ++m) {
        NURI_CHECK(m->is_string(), path, ": __metadata__ value '", m.key(), "' is not a string");
        metadata_[m.key()] = m->get<std::string>();
      }
      continue;
    }
    const std::string where = path + ": tensor '" + it.key() + "'";
    const auto& v = *it;
    NURI_CHECK(v.is_object() && v.contains("dtype") && v.contains("shape") &&
                   v.contains("data_offsets") && v["dtype"].is_string() &&
                   v["shape"].is_array() && v["data_offsets"].is_array() &&
                   v["data_offsets"].size() == 2,
               where, ": needs dtype, shape and data_offsets [begin, end]");
    SafetensorsEntry e;
    // Other dtypes of the format (an old GPT-2's U8 mask buffer) are checked and listed, and
    // named by the reads that find them.
    const std::string dtype = v["dtype"].get<std::string>();
    const int64_t other_size = other_safetensors_dtype_size(dtype);
    if (other_size == 0) e.dtype = dtype_from_safetensors(dtype, where);
    int64_t numel = 1;
    for (const auto& d : v["shape"]) {
      NURI_CHECK(d.is_number_integer() && d.get<int64_t>() >= 0, where, ": bad shape ",
                 v["shape"].dump());
      e.shape.push_back(d.get<int64_t>());
      NURI_CHECK(!__builtin_mul_overflow(numel, d.get<int64_t>(), &numel), where, ": shape ",
                 v["shape"].dump(), " has more elements than 2^63");
    }
    NURI_CHECK(v["data_offsets"][0].is_number_integer() && v["data_offsets"][1].is_number_integer(),
               where, ": data_offsets must be integers");
    e.begin = v["data_offsets"][0].get<int64_t>();
    e.end = v["data_offsets"][1].get<int64_t>();
    NURI_CHECK(0 <= e.begin && e.begin <= e.end && e.end <= data_bytes, where, ": bytes [",
               e.begin, ", ", e.end, ") are outside the file's ", data_bytes,
               " data bytes (truncated?)");
    int64_t need = 0;  // numel · element size, which a fuzzed shape may push past 2^63
    const int64_t es = other_size > 0 ? other_size : int64_t(dtype_size(e.dtype));
    const bool huge = __builtin_mul_overflow(numel, es, &need);
    NURI_CHECK(!huge && e.end - e.begin == need, where, ": shape ", v["shape"].dump(), " of ",
               dtype, " needs ", huge ? std::string("more than 2^63") : std::to_string(need),
               " bytes, the offsets give ", e.end - e.begin);
    if (other_size > 0) {
      others_[it.key()] = dtype;
    } else {
      entries_[it.key()] = e;
    }
    spans.push_back({e.begin, it.key()});
    ends.push_back(e.end);
  }
  std::vector<size_t> by_begin(spans.size());
  for (size_t i = 0; i < by_begin.size(); ++i) by_begin[i] = i;
  std::sort(by_begin.begin(), by_begin.end(),
            [&](size_t a, size_t b) { return spans[a] < spans[b]; });
  int64_t end = 0;
  for (const size_t i : by_begin) {
    const auto& [begin, name] = spans[i];
    NURI_CHECK(begin >= end || begin == ends[i], path, ": tensor '", name,
               "' overlaps the tensor before it");
    end = std::max(end, ends[i]);
    order_.push_back(name);
  }
  // The data is read through the stream the header came from: a file replaced since (a run
  // writing its model.safetensors again) cannot pair this header with another file's bytes.
  stream_->in = std::move(in);
}

std::vector<std::string> SafetensorsFile::names() const { return order_; }

const SafetensorsEntry& SafetensorsFile::entry(const std::string& name) const {
  auto it = entries_.find(name);
  if (auto other = others_.find(name); other != others_.end()) {
    NURI_CHECK(false, path_, ": tensor '", name, "' is ", other->second, ", which nuri does not "
               "read (F32, BF16, F16, I32, I64)");
  }
  NURI_CHECK(it != entries_.end(), path_, ": no tensor named '", name, "' (", entries_.size(),
             " tensors", order_.empty() ? "" : ", e.g. '" + order_.front() + "'", ")");
  return it->second;
}

void SafetensorsFile::read(const std::string& name, const Tensor& dst) const {
  const SafetensorsEntry& e = entry(name);
  read_range(name, 0, shape_numel(e.shape), dst);
}

void SafetensorsFile::read_range(const std::string& name, int64_t lo, int64_t hi,
                                 const Tensor& dst) const {
  const SafetensorsEntry& e = entry(name);
  const int64_t numel = shape_numel(e.shape);
  NURI_CHECK(0 <= lo && lo <= hi && hi <= numel, path_, ": tensor '", name, "' has ", numel,
             " elements; [", lo, ", ", hi, ") is not a range of them");
  NURI_CHECK(dst.defined() && dst.device().is_cpu() && dst.is_contiguous() &&
                 dst.numel() == hi - lo,
             path_, ": tensor '", name, "': reading ", hi - lo, " elements into ",
             dst.defined() ? dst.str() : std::string("an undefined tensor"));
  const bool same = dst.dtype() == e.dtype;
  NURI_CHECK(same || ((e.dtype == DType::f32 || e.dtype == DType::bf16 || e.dtype == DType::f16) &&
                      dst.dtype() == DType::f32),
             path_, ": tensor '", name, "' is ", dtype_name(e.dtype), "; it cannot be read as ",
             dtype_name(dst.dtype()));
  if (hi == lo) return;  // nothing to read (and an empty tensor has no storage to copy into)
  const size_t es = dtype_size(e.dtype);
  std::vector<char> raw(size_t(hi - lo) * es);
  {
    const std::lock_guard<std::mutex> lock(stream_->mutex);
    std::ifstream& in = stream_->in;
    if (!in.is_open()) {  // (closed by close(): the file read again must be the one parsed)
      in.open(path_, std::ios::binary | std::ios::ate);
      NURI_CHECK(in.is_open(), path_, ": cannot open (", std::strerror(errno), "); was it moved "
                 "or deleted since it was read (a checkpoint rotated out by a run's --keep)?");
      const int64_t now = int64_t(in.tellg());
      if (now != file_bytes_) in.close();
      NURI_CHECK(now == file_bytes_, path_, ": it was ", file_bytes_, " bytes when its header "
                 "was read and is ", now, " now: replaced since (open it again)");
    }
    in.clear();
    in.seekg(data_start_ + e.begin + lo * int64_t(es));
    in.read(raw.data(), std::streamsize(raw.size()));
    NURI_CHECK(in.gcount() == std::streamsize(raw.size()), path_, ": tensor '", name,
               "': the file ended early (truncated)");
  }
  if (same) {
    std::memcpy(dst.raw(), raw.data(), raw.size());
    return;
  }
  float* out = dst.data<float>();
  for (int64_t i = 0; i < hi - lo; ++i) {
    uint16_t b;
    std::memcpy(&b, raw.data() + size_t(i) * 2, 2);
    out[i] = e.dtype == DType::bf16 ? bf16_to_f32(bf16_t{b}) : f16_to_f32(f16_t{b});
  }
}

std::string tensors_checksum(const SafetensorsFile& f) {
  std::vector<std::string> names = f.names();
  std::sort(names.begin(), names.end());
  EVP_MD_CTX* ctx = new_sha();
  try {
    for (const std::string& name : names) {
      const SafetensorsEntry& e = f.entry(name);
      NURI_CHECK(numpy_dtype_str(e.dtype), f.path(), ": tensor '", name, "' is ",
                 dtype_name(e.dtype), ", which the tensor checksum does not cover");
      const Tensor t = Tensor::empty(e.shape, e.dtype);  // one tensor at a time
      f.read(name, t);
      hash_tensor_head(ctx, name, e.dtype, e.shape);
      EVP_DigestUpdate(ctx, t.raw(), t.nbytes());
    }
  } catch (...) {
    EVP_MD_CTX_free(ctx);
    throw;
  }
  return finish_sha(ctx);
}

}  // namespace nuri
