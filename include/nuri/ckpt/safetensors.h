// safetensors files (the format of Hugging Face's `safetensors`): an 8-byte little-endian header
// length N, N bytes of JSON ({name: {"dtype", "shape", "data_offsets": [begin, end]}, and an
// optional "__metadata__" of string values}), then the tensors' bytes, row-major, little-endian.
//
// Reading validates everything before trusting it: a header length beyond the file, JSON that
// does not parse, an unknown dtype, a shape whose bytes differ from the offsets, offsets outside
// the data or overlapping another tensor's: each is an error naming the file and the tensor.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "nuri/core/tensor.h"

namespace nuri {

/// Files written through this are fsynced before close() returns, and their SHA-256 is computed
/// on the way. Each chunk written is a crash point (ckpt::crash_point) for the fault-injection
/// tests.
class FileWriter {
 public:
  /// Creates (truncates) `path`.
  explicit FileWriter(const std::string& path);
  ~FileWriter();
  FileWriter(const FileWriter&) = delete;
  FileWriter& operator=(const FileWriter&) = delete;
  void write(const void* data, size_t bytes);
  /// Overwrites bytes already written at `offset` (before close). The SHA-256 close() returns
  /// is then of what write() passed, not of the file.
  void overwrite(int64_t offset, const void* data, size_t bytes);
  /// fsync and close; returns the lower-case hex SHA-256 of everything written.
  std::string close();
  int64_t bytes() const { return bytes_; }

 private:
  std::string path_;
  int fd_ = -1;
  int64_t bytes_ = 0;
  void* sha_ = nullptr;  // EVP_MD_CTX
};

struct SafetensorsPlanned {
  std::string name;
  DType dtype;
  Shape shape;
};

/// The metadata key of a model file's tensor checksum, which nuri.save (Python) and the C++
/// model writers record and nuri.load checks: safetensors itself has no checksum, so a flipped
/// byte would load. The value is the hex SHA-256, over the tensors in name order, of each one's
/// "NAME|DTYPE|SHAPE|" and its bytes, DTYPE as NumPy writes it ("<f4") and SHAPE as Python
/// writes a list ("[3, 4]"): python/nuri/io.py's tensors_sha256.
inline constexpr const char* kTensorsChecksumKey = "nuri_tensors_sha256";

/// Writes a safetensors file one tensor at a time, in the planned order: the header (every
/// tensor's dtype, shape and offsets) goes first, so a file of any size is written holding one
/// tensor in memory at a time.
class SafetensorsStreamWriter {
 public:
  /// [in] checksum: also record kTensorsChecksumKey in the metadata (the tensors must then be
  /// planned in name order, and be f32, f16, i32 or i64: the types NumPy reads).
  SafetensorsStreamWriter(const std::string& path, std::vector<SafetensorsPlanned> tensors,
                          const std::map<std::string, std::string>& metadata = {},
                          bool checksum = false);
  ~SafetensorsStreamWriter();
  /// The next planned tensor (its name, dtype and shape), a contiguous host tensor.
  void write(const std::string& name, const Tensor& host);
  /// After the last tensor: fsync and close; returns the file's SHA-256 (hex), or with
  /// `checksum` the tensors' checksum it recorded.
  std::string close();

 private:
  std::string path_;
  std::vector<SafetensorsPlanned> planned_;
  size_t next_ = 0;
  std::unique_ptr<FileWriter> file_;
  void* checksum_ = nullptr;       // EVP_MD_CTX of the tensor checksum, when recorded
  int64_t checksum_offset_ = -1;  // where its 64 hex digits go in the header
};

/// Writes host tensors (contiguous; f32, bf16, f16, i32, i64) as one safetensors file; returns
/// its SHA-256 (hex). The file is fsynced.
std::string write_safetensors(const std::string& path,
                              const std::vector<std::pair<std::string, Tensor>>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

struct SafetensorsEntry {
  DType dtype = DType::f32;
  Shape shape;
  int64_t begin = 0, end = 0;  ///< byte offsets into the data section
};

/// A safetensors file opened for reading: the header parsed and validated, the data read on
/// request.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);
  const std::string& path() const { return path_; }
  /// Tensor names in file order; those of dtypes nuri does not read (an old checkpoint's U8
  /// mask buffer) too, which entry() and read() name with their dtype.
  std::vector<std::string> names() const;
  bool contains(const std::string& name) const {
    return entries_.count(name) != 0 || others_.count(name) != 0;
  }
  const SafetensorsEntry& entry(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  /// Reads tensor `name` into host tensor dst (same element count; the file's dtype converted
  /// to dst's where both are floating point).
  void read(const std::string& name, const Tensor& dst) const;
  /// Reads elements [lo, hi) of the flattened tensor `name` into dst (hi - lo elements). The
  /// file stays open between reads (a tensor split by rows is read a row at a time: one open
  /// each would cost hours on a network file system), until close() or the object's end; copies
  /// share it. Safe from several threads.
  void read_range(const std::string& name, int64_t lo, int64_t hi, const Tensor& dst) const;
  /// Closes the file until the next read (a reader of many files keeps one open at a time).
  void close() const;

 private:
  struct Stream;
  std::shared_ptr<Stream> stream_;
  std::string path_;
  int64_t data_start_ = 0, file_bytes_ = 0;
  std::map<std::string, SafetensorsEntry> entries_;
  std::map<std::string, std::string> others_;  ///< tensors of other dtypes: their dtype
  std::vector<std::string> order_;
  std::map<std::string, std::string> metadata_;
};

/// The tensor checksum (kTensorsChecksumKey) of every tensor in `f`, read one at a time; what a
/// model file's recorded value is checked against.
std::string tensors_checksum(const SafetensorsFile& f);

/// safetensors' dtype names ("F32", "BF16", "F16", "I32", "I64") and back.
const char* safetensors_dtype(DType t);
DType dtype_from_safetensors(const std::string& s, const std::string& where);
/// The element size of the format's other dtypes (BOOL, U8, I8, F8_*, U16, I16, U32, U64, F64);
/// 0 for one nuri reads or a name the format does not have.
int64_t other_safetensors_dtype_size(const std::string& s);

/// Lower-case hex SHA-256 of a whole file.
std::string sha256_file(const std::string& path);
/// Lower-case hex SHA-256 of `bytes`.
std::string sha256_hex(const std::string& bytes);

namespace ckpt {
/// Fault injection for tests: when NURI_CKPT_CRASH_AT=k is set, the k-th crash point of the
/// process (counted from 1) ends it with SIGKILL. Checkpoint writing calls this before every
/// chunk written, fsync, rename and directory sync. No effect when the variable is unset.
void crash_point(const char* what);
/// Crash points passed so far in this process (to size the fault-injection sweep).
int64_t crash_points_passed();
}  // namespace ckpt

}  // namespace nuri
