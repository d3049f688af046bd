// Checkpoints that survive a shared pool (DESIGN.md, "Checkpoints"): one directory per step,
//
//   ROOT/step-00000120/rank-00001-of-00004.safetensors  each rank's slices of the tensors
//   ROOT/step-00000120/manifest.json                  the commit: files, SHA-256, slices, meta,
//                                                     and the manifest's own SHA-256
//   ROOT/latest                                       "step-00000120"
//
// Every rank writes its own slices, in parallel, and no rank holds the whole model: a tensor is
// stored as element ranges [lo, hi) of its flattened logical tensor, or as blocks of rows ×
// columns of a matrix (a tensor-parallel rank's column slice), in the files of the ranks that
// held them, and the manifest gives each tensor's shape and which file holds which slice. A
// slice that is the whole tensor is stored with the tensor's shape, so a checkpoint of one rank
// is a plain safetensors file of the model. (Format 1, still read: the parameters whole in a
// model.safetensors of rank 0.)
//
// A checkpoint exists only once its manifest is committed: every file is fsynced, the manifest
// is written to manifest.json.tmp, fsynced, renamed to manifest.json, and the directory fsynced;
// then `latest` is replaced the same way and checkpoints beyond the newest keep_last are removed.
// A directory without manifest.json is debris of an interrupted save and is never read.
//
// Tensors are read back as any range of their elements: that is how a checkpoint of N ranks
// with one ZeRO layout loads into M ranks with another, each reading the slices it needs. Every file's SHA-256 is checked before its data is
// used, and every inconsistency is an error naming the file and the tensor.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "nuri/ckpt/safetensors.h"
#include "nuri/core/tensor.h"
#include "nuri/dist/communicator.h"

namespace nuri {

/// The directory name of step `step`: "step-%08d".
std::string checkpoint_dir_name(int64_t step);

/// Writes one checkpoint; every rank of `comm` (null: one process) constructs one with the same
/// root and step, adds its tensors, and calls commit().
class CheckpointWriter {
 public:
  /// Collective. Creates ROOT/step-… . A committed checkpoint of the same step stays whole and
  /// readable until this one commits: the new one is written to ROOT/step-….new and takes its
  /// place in publish(), by one atomic exchange where the filesystem has it. Without (NFS), the
  /// old one moves aside to step-….old first; a crash between the renames leaves the step
  /// beside its name, where CheckpointReader::find reads it and the next save puts it back.
  CheckpointWriter(std::string root, int64_t step, Communicator* comm);
  /// This rank's elements [lo, lo + part.numel()) of a tensor of `numel` elements (f32),
  /// flattened; `shape` (optional) is its logical shape, recorded in the manifest. The ranks'
  /// ranges together must cover [0, numel) once.
  void add_range(const std::string& name, int64_t numel, int64_t lo, const Tensor& host_part,
                 const Shape& shape = {});
  /// This rank's block [row0, row0 + rows) × [col0, col0 + cols) of a matrix of logical `shape`
  /// (f32, host_part [rows, cols]): a column-parallel slice, stored as one entry instead of one
  /// range per row. A rank may add several ranges and blocks of one tensor; all ranks' together
  /// must cover it once.
  void add_block(const std::string& name, const Shape& shape, int64_t row0, int64_t col0,
                 const Tensor& host_part);
  /// The training state as a JSON object (text); rank 0's is written.
  void set_meta(std::string json);
  /// Collective: writes this rank's files, then rank 0 the manifest, `latest`, and removes
  /// checkpoints beyond the newest keep_last (>= 1) up to this step (later ones, left by a run
  /// gone back through `latest`, are not counted or removed). Returns the checkpoint's directory.
  /// commit() is write_files() then publish(); asynchronous saving runs the first on a thread
  /// of its own (it does not communicate) and the second later on the training thread.
  std::string commit(int keep_last);
  /// Writes this rank's files and frees the host copies. Errors are kept for publish().
  void write_files();
  /// Collective, after write_files() on every rank: the manifest, `latest`, retention.
  std::string publish(int keep_last);
  /// The checkpoint's directory once committed (ROOT/step-…).
  const std::string& directory() const { return dir_; }

 private:
  std::string root_, dir_;
  std::string write_dir_;  ///< dir_, or dir_ + ".new" while replacing a committed checkpoint
  int64_t step_;
  Communicator* comm_;
  int rank_ = 0, world_ = 1;
  struct RangeInfo {
    std::string name;
    int64_t numel, lo;
    Shape shape;
    int64_t row0 = -1, col0 = 0;  ///< a block (row0 >= 0): its first row and column
    Tensor data;
  };
  std::vector<RangeInfo> ranges_;
  std::string meta_ = "{}";
  std::string record_ = "{}", write_error_;
};

/// Reads one committed checkpoint.
class CheckpointReader {
 public:
  /// `path`: a checkpoint directory, or a root, whose checkpoint is the one `latest` names when
  /// that one is committed (a save that died between its manifest and `latest` is then not the
  /// one resumed: its steps are done again), else the newest committed one. Throws when there
  /// is none, or the manifest does not parse.
  explicit CheckpointReader(const std::string& path);
  ~CheckpointReader();
  /// The directory a root resolves to, or "" when the root holds no committed checkpoint.
  static std::string find(const std::string& root);

  const std::string& dir() const { return dir_; }
  int64_t step() const { return step_; }
  const std::string& meta() const { return meta_; }
  /// Every tensor's name (sorted).
  std::vector<std::string> range_names() const;
  /// Whether the checkpoint has tensor `name`, its elements, and its shape (the recorded one,
  /// or [numel] when none was).
  bool has_range(const std::string& name) const;
  int64_t range_numel(const std::string& name) const;
  Shape range_shape(const std::string& name) const;
  /// Elements [lo, hi) of tensor `name` (f32, flattened) into host_dst, from whichever files
  /// hold them.
  void read_range(const std::string& name, int64_t lo, int64_t hi, const Tensor& host_dst) const;

 private:
  /// The file, opened and its SHA-256 checked against the manifest on first use.
  const SafetensorsFile& file(const std::string& name) const;

  struct Part {
    std::string file, key;  ///< key: the entry's name in the file
    int64_t lo, hi;         ///< a range; a block: its rows × cols from (row0, col0)
    int64_t row0 = -1, col0 = 0, rows = 0, cols = 0;
  };
  std::string dir_;
  int64_t step_ = 0;
  std::string meta_;
  std::map<std::string, std::string> sha_;           // file -> expected SHA-256
  std::map<std::string, int64_t> bytes_;              // file -> size
  struct Range {
    int64_t numel = 0;
    Shape shape;
    std::vector<Part> parts;
  };
  std::map<std::string, Range> ranges_;
  mutable std::map<std::string, std::unique_ptr<SafetensorsFile>> open_;
  mutable std::deque<std::string> recent_;  // the files kept open, most recently read first
  mutable std::mutex open_mutex_;  // open_ is filled on first use, from any thread
};

}  // namespace nuri
