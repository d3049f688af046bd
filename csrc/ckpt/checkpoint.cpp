// Checkpoint directories: writing with an atomic commit, reading with checksums (see the header).
#include "nuri/ckpt/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/json_checked.h"
#include "nuri/core/error.h"
#include "nuri/core/log.h"

namespace nuri {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr const char* kManifest = "manifest.json";
// The manifest's own SHA-256: of its compact JSON text without this field (nlohmann's dump(),
// keys in order), so that reading and dumping it again gives the text that was hashed. Files
// are checksummed in the manifest; this covers the manifest (a digit of a step or a range).
// Manifests of before it have none and are read as they are.
constexpr const char* kManifestChecksum = "manifest_sha256";
constexpr const char* kModelFile = "model.safetensors";  // format 1's whole parameters
constexpr int kFormatVersion = 3;  // 2 without keys and blocks

void fsync_dir(const std::string& dir) {
  ckpt::crash_point("directory sync");
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  NURI_CHECK(fd >= 0, "cannot open directory ", dir, " to sync it: ", std::strerror(errno));
  const int rc = ::fsync(fd);
  ::close(fd);
  NURI_CHECK(rc == 0, "fsync of directory ", dir, " failed: ", std::strerror(errno));
}

/// Writes `text` to dir/name atomically: a temporary file, fsynced, renamed over the name, the
/// directory fsynced.
void atomic_write(const std::string& dir, const std::string& name, const std::string& text) {
  const std::string tmp = dir + "/" + name + ".tmp", dst = dir + "/" + name;
  FileWriter w(tmp);
  w.write(text.data(), text.size());
  w.close();
  ckpt::crash_point("rename");
  NURI_CHECK(::rename(tmp.c_str(), dst.c_str()) == 0, "cannot rename ", tmp, " to ", dst, ": ",
             std::strerror(errno));
  fsync_dir(dir);
}

bool committed(const fs::path& dir) { return fs::is_regular_file(dir / kManifest); }

/// Where a save of a step that is already committed writes, beside it (step-….new), and where
/// a replacement without an atomic exchange moves the old one aside (step-….old).
constexpr const char* kStaging = ".new";
constexpr const char* kAside = ".old";

/// Puts the committed checkpoint `fresh` (old + ".new") in the place of the committed `old`,
/// then removes the old one. On Linux's local filesystems one atomic exchange of the two names,
/// so `old`'s name always holds a committed checkpoint. Where the filesystem has no exchange
/// (NFS), the old one moves aside to old + ".old" first; a crash before the fresh one takes its
/// name leaves both committed beside the name, which CheckpointReader::find and the next save
/// (recover_replacements) take the fresh one from. NURI_CKPT_NO_EXCHANGE=1 takes that path
/// everywhere (tests).
void replace_committed(const std::string& fresh, const std::string& old) {
  ckpt::crash_point("rename");
  const std::string root = fs::path(old).parent_path().string();
  const char* no_exchange = std::getenv("NURI_CKPT_NO_EXCHANGE");
  const bool exchange = !(no_exchange && std::string(no_exchange) == "1");
  if (exchange &&
      ::renameat2(AT_FDCWD, fresh.c_str(), AT_FDCWD, old.c_str(), RENAME_EXCHANGE) == 0) {
    fsync_dir(root);  // `fresh` names the old checkpoint now
  } else {
    NURI_CHECK(!exchange || errno == EINVAL || errno == ENOSYS || errno == ENOTSUP,
               "cannot exchange ", fresh, " and ", old, ": ", std::strerror(errno));
    const std::string aside = old + kAside;
    fs::remove_all(aside);
    NURI_CHECK(::rename(old.c_str(), aside.c_str()) == 0, "cannot rename ", old, " to ", aside,
               ": ", std::strerror(errno));
    fsync_dir(root);
    ckpt::crash_point("rename");
    NURI_CHECK(::rename(fresh.c_str(), old.c_str()) == 0, "cannot rename ", fresh, " to ", old,
               ": ", std::strerror(errno));
    fsync_dir(root);
    fs::remove(fs::path(aside) / kManifest);  // uncommitted before it goes
    fs::remove_all(aside);
    return;
  }
  fs::remove(fs::path(fresh) / kManifest);  // uncommitted before it goes
  fs::remove_all(fresh);
}

/// step-%08d → step, or -1 for other names.
int64_t step_of(const std::string& name) {
  // step-%08lld: 8 digits, more from step 10^8 on (up to 18, within an int64).
  if (name.size() < 13 || name.size() > 23 || name.rfind("step-", 0) != 0) return -1;
  int64_t s = 0;
  for (size_t i = 5; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return -1;
    s = s * 10 + (name[i] - '0');
  }
  return name == checkpoint_dir_name(s) ? s : -1;  // no leading zeros beyond the 8 digits
}

/// "step-00000005.new" → ("step-00000005", ".new"); {"", ""} for other names.
std::pair<std::string, std::string> replacement_of(const std::string& name) {
  for (const char* suffix : {kStaging, kAside}) {
    const size_t n = std::strlen(suffix);
    if (name.size() > n && name.compare(name.size() - n, n, suffix) == 0 &&
        step_of(name.substr(0, name.size() - n)) >= 0) {
      return {name.substr(0, name.size() - n), suffix};
    }
  }
  return {"", ""};
}

/// The committed replacement of root/name left by an interrupted replacement when root/name
/// itself is not committed (the fresh one first), or "".
std::string committed_replacement(const fs::path& root, const std::string& name) {
  if (committed(root / name)) return "";
  for (const char* suffix : {kStaging, kAside}) {
    if (committed(root / (name + suffix))) return (root / (name + suffix)).string();
  }
  return "";
}

/// After an interrupted replacement: a step whose name holds no committed checkpoint gets its
/// committed replacement back (the fresh one, else the old one); the rest are debris. Rank 0.
void recover_replacements(const std::string& root) {
  std::vector<fs::path> found;
  for (const auto& d : fs::directory_iterator(root)) {
    if (d.is_directory() && !replacement_of(d.path().filename().string()).first.empty()) {
      found.push_back(d.path());
    }
  }
  std::sort(found.begin(), found.end());  // step-N.new before step-N.old
  for (const fs::path& d : found) {
    const fs::path step = fs::path(root) / replacement_of(d.filename().string()).first;
    if (!committed(step) && committed(d)) {
      fs::remove_all(step);
      NURI_CHECK(::rename(d.c_str(), step.c_str()) == 0, "cannot rename ", d.string(), " to ",
                 step.string(), ": ", std::strerror(errno));
      fsync_dir(root);
    } else {
      fs::remove(d / kManifest);
      fs::remove_all(d);
    }
  }
}

/// Every rank's string, in rank order (through the host communicator: lengths, then bytes).
std::vector<std::string> gather_strings(Communicator* comm, const std::string& mine) {
  if (!comm || comm->size() == 1) return {mine};
  Communicator& c = *comm->host_communicator();
  const int n = c.size();
  // Each length as two f32 of 24 bits (exact), so no rank's record is too long to send: a rank
  // refusing alone would leave the others waiting in the gather.
  constexpr int64_t k24 = int64_t(1) << 24;
  Tensor len = Tensor::empty({2}, DType::f32), lens = Tensor::empty({2 * n}, DType::f32);
  len.data<float>()[0] = float(int64_t(mine.size()) % k24);
  len.data<float>()[1] = float(int64_t(mine.size()) / k24);
  c.all_gather(len, lens);
  std::vector<int64_t> bytes(static_cast<size_t>(n)), counts(static_cast<size_t>(n));
  int64_t total = 0;
  for (int r = 0; r < n; ++r) {
    bytes[size_t(r)] = int64_t(lens.data<float>()[2 * r]) +
                       int64_t(lens.data<float>()[2 * r + 1]) * k24;
    counts[size_t(r)] = (bytes[size_t(r)] + 1) / 2;  // bf16 elements carry 2 bytes
    total += counts[size_t(r)];
  }
  Tensor in = Tensor::zeros({counts[size_t(c.rank())]}, DType::bf16);
  std::memcpy(in.raw(), mine.data(), mine.size());
  Tensor out = Tensor::empty({total}, DType::bf16);
  c.all_gather_v(in, out, counts);
  std::vector<std::string> all;
  const char* p = static_cast<const char*>(out.raw());
  for (int r = 0; r < n; ++r) {
    all.emplace_back(p, size_t(bytes[size_t(r)]));
    p += counts[size_t(r)] * 2;
  }
  return all;
}

/// Rank 0's verdict to every rank: "" (ok) or its error message.
void agree(Communicator* comm, const std::string& rank0_error, const char* what) {
  std::string verdict = rank0_error;
  if (comm && comm->size() > 1) verdict = gather_strings(comm, rank0_error)[0];
  NURI_CHECK(verdict.empty(), what, (comm && comm->rank() != 0) ? " (on rank 0)" : "", ": ",
             verdict);
}

}  // namespace

std::string checkpoint_dir_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step-%08lld", (long long)step);
  return buf;
}

// ---- writing ------------------------------------------------------------------------------------

CheckpointWriter::CheckpointWriter(std::string root, int64_t step, Communicator* comm)
    : root_(std::move(root)), step_(step), comm_(comm) {
  NURI_CHECK(step >= 0, "checkpoint step ", step, " must be >= 0");
  if (comm_) {
    rank_ = comm_->rank();
    world_ = comm_->size();
  }
  dir_ = root_ + "/" + checkpoint_dir_name(step);
  // Rank 0's verdict: "s" (stage beside a committed checkpoint), "d" (write in place) or "e"
  // and its error. Each rank makes the path from its own root (mounts may differ).
  std::string made;
  if (rank_ == 0) {
    try {
      fs::create_directories(root_);
      recover_replacements(root_);
      if (committed(dir_)) {
        // A committed checkpoint of this step stays whole and readable until the new one is
        // committed: the new one is written beside it and takes its place in publish().
        fs::remove_all(dir_ + kStaging);
        fs::create_directory(dir_ + kStaging);
        made = "s";
      } else {
        fs::remove_all(dir_);  // debris of an interrupted save
        fs::create_directory(dir_);
        made = "d";
      }
      fsync_dir(root_);
    } catch (const std::exception& e) {
      made = std::string("e") + e.what();
    }
  }
  if (comm_ && comm_->size() > 1) made = gather_strings(comm_, rank_ == 0 ? made : "")[0];
  NURI_CHECK(made[0] != 'e', "creating the checkpoint directory",
             rank_ != 0 ? " (on rank 0)" : "", ": ", made.substr(1));
  write_dir_ = made == "s" ? dir_ + kStaging : dir_;
}

void CheckpointWriter::add_range(const std::string& name, int64_t numel, int64_t lo,
                                 const Tensor& host_part, const Shape& shape) {
  NURI_CHECK(host_part.dtype() == DType::f32 && lo >= 0 && lo + host_part.numel() <= numel,
             "add_range('", name, "'): [", lo, ", ", lo + host_part.numel(),
             ") of an f32 tensor of ", numel, " elements");
  NURI_CHECK(shape.empty() || shape_numel(shape) == numel, "add_range('", name, "'): shape ",
             shape_str(shape), " is not ", numel, " elements");
  // The whole tensor is stored with its shape (a one-rank checkpoint is a plain model file).
  const bool whole = !shape.empty() && lo == 0 && host_part.numel() == numel;
  ranges_.push_back({name, numel, lo, shape, -1, 0,
                     whole ? host_part.view(shape) : host_part.view({host_part.numel()})});
}

void CheckpointWriter::add_block(const std::string& name, const Shape& shape, int64_t row0,
                                 int64_t col0, const Tensor& host_part) {
  NURI_CHECK(shape.size() == 2 && host_part.dtype() == DType::f32 && host_part.dim() == 2 &&
                 host_part.numel() > 0 && row0 >= 0 && col0 >= 0 && row0 + host_part.size(0) <= shape[0] &&
                 col0 + host_part.size(1) <= shape[1],
             "add_block('", name, "'): rows [", row0, ", +", host_part.size(0), ") × columns [",
             col0, ", +", host_part.dim() == 2 ? host_part.size(1) : -1, ") of a matrix ",
             shape_str(shape));
  ranges_.push_back({name, shape_numel(shape), row0 * shape[1] + col0, shape, row0, col0,
                     host_part});
}

void CheckpointWriter::set_meta(std::string json_text) { meta_ = std::move(json_text); }

std::string CheckpointWriter::commit(int keep_last) {
  write_files();
  return publish(keep_last);
}

void CheckpointWriter::write_files() {
  // 1. Every rank writes its own file (no communication: a background thread may do this).
  json record = json::object();
  std::string error;
  try {
    if (!ranges_.empty()) {
      char name[64];
      std::snprintf(name, sizeof name, "rank-%05d-of-%05d.safetensors", rank_, world_);
      // A tensor this rank holds in several pieces has one entry per piece: "name#i".
      std::map<std::string, int> pieces, seen;
      for (const RangeInfo& r : ranges_) ++pieces[r.name];
      std::vector<std::pair<std::string, Tensor>> entries;
      json parts = json::array();
      for (const RangeInfo& r : ranges_) {
        const std::string key =
            pieces[r.name] == 1 ? r.name : r.name + "#" + std::to_string(seen[r.name]++);
        entries.push_back({key, r.data});
        // [lo, hi): the elements the piece spans (a block's rows lie between them)
        const int64_t hi = r.row0 < 0 ? r.lo + r.data.numel()
                                      : (r.row0 + r.data.size(0) - 1) * r.shape[1] + r.col0 +
                                            r.data.size(1);
        json p = {{"name", r.name}, {"numel", r.numel}, {"lo", r.lo}, {"hi", hi}};
        if (key != r.name) p["key"] = key;
        if (r.row0 >= 0) p["block"] = {r.row0, r.col0, r.data.size(0), r.data.size(1)};
        if (!r.shape.empty()) p["shape"] = r.shape;
        parts.push_back(p);
      }
      const std::string digest = write_safetensors(write_dir_ + "/" + name, entries);
      record["file"] = name;
      record["sha256"] = digest;
      record["bytes"] = int64_t(fs::file_size(write_dir_ + "/" + name));
      record["ranges"] = parts;
    }
  } catch (const std::exception& e) {
    error = e.what();
  }
  record_ = record.dump();
  write_error_ = error;
  // The host copies are on disk now; their memory can go.
  ranges_.clear();
}

std::string CheckpointWriter::publish(int keep_last) {
  NURI_CHECK(keep_last >= 1, "keep_last (", keep_last, ") must be >= 1");
  // Every rank learns whether every rank wrote its file.
  const std::vector<std::string> errors = gather_strings(comm_, write_error_);
  for (size_t r = 0; r < errors.size(); ++r) {
    NURI_CHECK(errors[r].empty(), "writing checkpoint ", dir_, " failed on rank ", r, ": ",
               errors[r]);
  }
  const std::vector<std::string> records = gather_strings(comm_, record_);
  // 2. Rank 0 commits: the manifest, then `latest`, then retention.
  std::string commit_error;
  if (rank_ == 0) {
    try {
      json manifest;
      manifest["format"] = "nuri-checkpoint";
      // Version 2 unless a part needs version 3's keys or blocks (tensor parallelism), so
      // other checkpoints stay readable by the nuri that wrote version 2.
      int version = 2;
      manifest["step"] = step_;
      manifest["world_size"] = world_;
      json files = json::object(), ranges = json::object();
      for (const std::string& text : records) {
        const json r = json::parse(text);
        if (!r.contains("file")) continue;
        files[r["file"].get<std::string>()] = {{"sha256", r["sha256"]}, {"bytes", r["bytes"]}};
        for (const auto& p : r["ranges"]) {
          json& e = ranges[p["name"].get<std::string>()];
          NURI_CHECK(!e.contains("numel") || e["numel"] == p["numel"], "checkpoint: the ranks "
                     "give '", p["name"].get<std::string>(), "' different sizes");
          e["numel"] = p["numel"];
          if (p.contains("shape")) e["shape"] = p["shape"];
          json part = {{"file", r["file"]}, {"lo", p["lo"]}, {"hi", p["hi"]}};
          if (p.contains("key")) {
            part["key"] = p["key"];
            version = kFormatVersion;
          }
          if (p.contains("block")) {
            part["block"] = p["block"];
            version = kFormatVersion;
          }
          e["parts"].push_back(part);
        }
      }
      // The ranges of each flat tensor must tile it exactly once (a block: one span a row).
      for (auto& [name, e] : ranges.items()) {
        std::vector<std::pair<int64_t, int64_t>> spans;
        const int64_t width = e.contains("shape") && e["shape"].size() == 2
                                  ? e["shape"][1].get<int64_t>() : 0;
        for (const auto& p : e["parts"]) {
          if (!p.contains("block")) {
            spans.push_back({p["lo"], p["hi"]});
            continue;
          }
          const auto b = p["block"].get<std::vector<int64_t>>();
          for (int64_t i = 0; i < b[2]; ++i) {
            spans.push_back({(b[0] + i) * width + b[1], (b[0] + i) * width + b[1] + b[3]});
          }
        }
        std::sort(spans.begin(), spans.end());
        int64_t at = 0;
        for (const auto& [lo, hi] : spans) {
          NURI_CHECK(lo == at, "checkpoint: the ranks' ranges of '", name, "' leave [", at, ", ",
                     lo, ") out or overlap there");
          at = hi;
        }
        NURI_CHECK(at == e["numel"].get<int64_t>(), "checkpoint: the ranks' ranges of '", name,
                   "' end at ", at, " of ", e["numel"].get<int64_t>());
      }
      manifest["version"] = version;
      manifest["files"] = files;
      manifest["ranges"] = ranges;
      manifest["meta"] = json::parse(meta_);
      manifest[kManifestChecksum] = sha256_hex(manifest.dump());
      atomic_write(write_dir_, kManifest, manifest.dump(1) + "\n");
      if (write_dir_ != dir_) replace_committed(write_dir_, dir_);
      atomic_write(root_, "latest", checkpoint_dir_name(step_) + "\n");
      // Retention: the newest keep_last committed checkpoints up to this one stay; uncommitted
      // directories of earlier steps (interrupted saves) go too. Committed ones of later steps
      // (a run gone back to an earlier one through `latest`) are not this run's to count or
      // delete: counted, they would rotate out the run's own.
      // The checkpoint is committed: a retention that fails (a directory another process holds
      // open on NFS) is said, and tried again at the next save, not this save's failure.
      try {
        std::vector<std::pair<int64_t, fs::path>> done;
        recover_replacements(root_);
        for (const auto& d : fs::directory_iterator(root_)) {
          const int64_t s = step_of(d.path().filename().string());
          if (s < 0 || !d.is_directory()) continue;
          if (committed(d.path())) {
            if (s <= step_) done.push_back({s, d.path()});
          } else if (s < step_) {
            fs::remove_all(d.path());
          }
        }
        std::sort(done.begin(), done.end());
        for (size_t i = 0; i + size_t(keep_last) < done.size(); ++i) {
          if (done[i].first == step_) continue;
          // Uncommit before deleting, so a crash in between leaves no half checkpoint.
          fs::remove(done[i].second / kManifest);
          fs::remove_all(done[i].second);
        }
      } catch (const std::exception& e) {
        NURI_LOG(warn, "checkpoint ", dir_, " is committed, but removing older checkpoints under ",
                 root_, " failed (", e.what(), "); the next save tries again");
      }
    } catch (const std::exception& e) {
      commit_error = e.what();
    }
  }
  agree(comm_, commit_error, "committing the checkpoint");
  return dir_;
}

// ---- reading ------------------------------------------------------------------------------------

std::string CheckpointReader::find(const std::string& root) {
  if (!fs::is_directory(root)) return "";
  if (committed(root)) return root;  // a checkpoint directory itself
  std::ifstream latest(root + "/latest");
  std::string name;
  if (latest >> name && step_of(name) >= 0) {
    if (committed(fs::path(root) / name)) return root + "/" + name;
    // A replacement interrupted between its renames (a filesystem without an atomic exchange):
    // the step is beside its name; the next save puts it back.
    const std::string beside = committed_replacement(root, name);
    if (!beside.empty()) return beside;
  }
  int64_t best = -1;
  std::string dir;
  for (const auto& d : fs::directory_iterator(root)) {
    const int64_t s = step_of(d.path().filename().string());
    if (s > best && committed(d.path())) {
      best = s;
      dir = d.path().string();
    }
  }
  if (!dir.empty()) {
    NURI_LOG(warn, root, "/latest does not name a committed checkpoint; using the newest "
             "committed one, ", dir);
  }
  return dir;
}

CheckpointReader::CheckpointReader(const std::string& path) {
  NURI_CHECK(fs::exists(path), "checkpoint ", path, " does not exist");
  dir_ = find(path);
  NURI_CHECK(!dir_.empty(), path, " holds no committed checkpoint (no manifest.json: a save that "
             "was interrupted is not a checkpoint)");
  const std::string mpath = dir_ + "/" + kManifest;
  json m;
  try {
    std::ifstream in(mpath);
    m = json_checked::parse(in);
  } catch (const std::exception& e) {
    NURI_CHECK(false, mpath, " does not parse: ", e.what());
  }
  if (m.is_object() && m.contains(kManifestChecksum)) {
    const json given = m[kManifestChecksum];
    m.erase(kManifestChecksum);
    const std::string digest = sha256_hex(m.dump());
    NURI_CHECK(given.is_string() && given.get<std::string>() == digest, mpath, " fails its "
               "checksum (SHA-256 ", digest.substr(0, 16), "…, the manifest says ",
               given.is_string() ? given.get<std::string>().substr(0, 16) + "…" : given.dump(),
               "): it changed after it was written, so it is corrupted; use an earlier "
               "checkpoint (a manifest edited on purpose must drop its \"", kManifestChecksum,
               "\" field)");
  }
  try {
    NURI_CHECK(m.value("format", "") == "nuri-checkpoint", mpath, " is not a nuri checkpoint "
               "manifest");
    const int64_t version = m.contains("version") ? json_checked::integer(m["version"]) : 0;
    NURI_CHECK(version >= 1 && version <= kFormatVersion, mpath, ": format version ", version,
               ", this nuri reads versions 1 to ", kFormatVersion);
    step_ = json_checked::integer(m.at("step"));
    meta_ = m.at("meta").dump();
    for (const auto& [file, e] : m.at("files").items()) {
      sha_[file] = e.at("sha256").get<std::string>();
      bytes_[file] = json_checked::integer(e.at("bytes"));
      NURI_CHECK(file.find('/') == std::string::npos, mpath, ": file name '", file,
                 "' leaves the directory");
    }
    for (const auto& [name, e] : m.at("ranges").items()) {
      Range& r = ranges_[name];
      r.numel = json_checked::integer(e.at("numel"));
      r.shape = e.contains("shape") ? json_checked::integers(e["shape"]) : Shape{r.numel};
      int64_t elements = 1;  // the shape's product, refused when a dimension is negative or
      bool fits = true;      // the product overflows (a manifest is a user's file)
      for (const int64_t d : r.shape) {
        fits = fits && d >= 0 && !__builtin_mul_overflow(elements, d, &elements);
      }
      NURI_CHECK(fits && elements == r.numel, mpath, ": '", name, "' has shape ",
                 shape_str(r.shape), " but ", r.numel, " elements");
      for (const auto& p : e.at("parts")) {
        const std::string f = p.at("file").get<std::string>();
        NURI_CHECK(sha_.count(f), mpath, ": range of '", name, "' in unlisted file ", f);
        Part part{f, p.value("key", name), json_checked::integer(p.at("lo")),
                  json_checked::integer(p.at("hi"))};
        NURI_CHECK(0 <= part.lo && part.lo <= part.hi && part.hi <= r.numel, mpath, ": a part of '",
                   name, "' in ", f, " spans [", part.lo, ", ", part.hi, "), not inside its ",
                   r.numel, " elements");
        if (p.contains("block")) {
          const auto b = json_checked::integers(p["block"]);
          NURI_CHECK(b.size() == 4 && r.shape.size() == 2 && b[0] >= 0 && b[1] >= 0 &&
                         b[2] >= 0 && b[3] >= 0 && b[2] <= r.shape[0] - b[0] &&
                         b[3] <= r.shape[1] - b[1],
                     mpath, ": block of '", name, "' in ", f, " is not inside its shape ",
                     shape_str(r.shape));
          part.row0 = b[0];
          part.col0 = b[1];
          part.rows = b[2];
          part.cols = b[3];
        }
        r.parts.push_back(part);
      }
    }
    if (version == 1) {  // the parameters whole in rank 0's model.safetensors
      NURI_CHECK(sha_.count(kModelFile), mpath, " lists no ", kModelFile);
      const SafetensorsFile& f = file(kModelFile);
      for (const std::string& name : f.names()) {
        Range& r = ranges_[name];
        r.shape = f.entry(name).shape;
        r.numel = shape_numel(r.shape);
        r.parts = {{kModelFile, name, 0, r.numel}};
      }
    }
  } catch (const nlohmann::json::exception& e) {
    NURI_CHECK(false, mpath, " is missing a field or has one of the wrong type: ", e.what());
  }
}

CheckpointReader::~CheckpointReader() = default;

const SafetensorsFile& CheckpointReader::file(const std::string& name) const {
  const std::lock_guard<std::mutex> lock(open_mutex_);  // (reading a file needs no lock)
  // At most kOpenFiles open at a time (a checkpoint of thousands of ranks' files would exceed
  // the process's limit), the least recently read closed first; a row of a new layout may take
  // its pieces from several old ranks' files in turn, each kept open for the next row.
  constexpr size_t kOpenFiles = 16;
  if (recent_.empty() || recent_.front() != name) {
    recent_.erase(std::remove(recent_.begin(), recent_.end(), name), recent_.end());
    recent_.push_front(name);
    if (recent_.size() > kOpenFiles) {
      if (auto old = open_.find(recent_.back()); old != open_.end()) old->second->close();
      recent_.pop_back();
    }
  }
  auto it = open_.find(name);
  if (it != open_.end()) return *it->second;
  const std::string path = dir_ + "/" + name;
  NURI_CHECK(fs::is_regular_file(path), "checkpoint ", dir_, ": ", name,
             " is listed in the manifest but missing");
  const int64_t size = int64_t(fs::file_size(path));
  NURI_CHECK(size == bytes_.at(name), "checkpoint ", dir_, ": ", name, " has ", size,
             " bytes, the manifest says ", bytes_.at(name), " (truncated or replaced)");
  const std::string digest = sha256_file(path);
  NURI_CHECK(digest == sha_.at(name), "checkpoint ", dir_, ": ", name, " fails its checksum (",
             "SHA-256 ", digest.substr(0, 16), "…, the manifest says ", sha_.at(name).substr(0, 16),
             "…): the file is corrupted; use an earlier checkpoint");
  return *(open_[name] = std::make_unique<SafetensorsFile>(path));
}

std::vector<std::string> CheckpointReader::range_names() const {
  std::vector<std::string> names;
  for (const auto& [name, r] : ranges_) names.push_back(name);
  return names;
}

bool CheckpointReader::has_range(const std::string& name) const { return ranges_.count(name); }

int64_t CheckpointReader::range_numel(const std::string& name) const {
  auto it = ranges_.find(name);
  NURI_CHECK(it != ranges_.end(), "checkpoint ", dir_, " has no tensor '", name, "'");
  return it->second.numel;
}

Shape CheckpointReader::range_shape(const std::string& name) const {
  range_numel(name);  // names a missing tensor
  return ranges_.at(name).shape;
}

void CheckpointReader::read_range(const std::string& name, int64_t lo, int64_t hi,
                                  const Tensor& host_dst) const {
  const int64_t numel = range_numel(name);
  NURI_CHECK(0 <= lo && lo <= hi && hi <= numel && host_dst.numel() == hi - lo &&
                 host_dst.dtype() == DType::f32 && host_dst.device().is_cpu(),
             "checkpoint ", dir_, ": reading [", lo, ", ", hi, ") of '", name, "' (", numel,
             " elements) into ", host_dst.str());
  int64_t covered = 0;
  const Range& range = ranges_.at(name);
  for (const Part& p : range.parts) {
    const int64_t a = std::max(lo, p.lo), b = std::min(hi, p.hi);
    if (a >= b) continue;
    const SafetensorsFile& f = file(p.file);
    const int64_t held = p.row0 >= 0 ? p.rows * p.cols : p.hi - p.lo;
    NURI_CHECK(shape_numel(f.entry(p.key).shape) == held, "checkpoint ", dir_, ": ", p.file,
               " holds ", shape_numel(f.entry(p.key).shape), " elements of '", name,
               "', the manifest says ", held);
    if (p.row0 < 0) {
      f.read_range(p.key, a - p.lo, b - p.lo, host_dst.slice(0, a - lo, b - lo));
      covered += b - a;
      continue;
    }
    const int64_t width = range.shape[1], base = p.row0 * width + p.col0;
    // Only the block's rows that can meet [lo, hi): row i spans [base + i·width, + cols).
    const int64_t first_row = std::max<int64_t>(0, (lo - base - p.cols) / width);
    const int64_t end_row = std::min(p.rows, (hi - base) / width + 1);
    for (int64_t i = first_row; i < end_row; ++i) {  // the block's rows are ranges of the tensor
      const int64_t first = (p.row0 + i) * width + p.col0;
      const int64_t ra = std::max(lo, first), rb = std::min(hi, first + p.cols);
      if (ra >= rb) continue;
      f.read_range(p.key, i * p.cols + (ra - first), i * p.cols + (rb - first),
                   host_dst.slice(0, ra - lo, rb - lo));
      covered += rb - ra;
    }
  }
  NURI_CHECK(covered == hi - lo, "checkpoint ", dir_, ": the files hold ", covered, " of the ",
             hi - lo, " elements [", lo, ", ", hi, ") of '", name, "'");
}

}  // namespace nuri
