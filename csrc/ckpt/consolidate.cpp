// A sharded checkpoint's parameters as one safetensors file, streamed (nuri/ckpt/consolidate.h).
#include "nuri/ckpt/consolidate.h"

#include <unistd.h>

#include <algorithm>
#include <exception>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "nuri/ckpt/checkpoint.h"
#include "nuri/ckpt/safetensors.h"
#include "nuri/backend/build_info.h"
#include "nuri/model/transformer.h"

namespace nuri {

std::string checkpoint_owns(const std::string& step_dir, const std::string& path) {
  namespace fs = std::filesystem;
  const fs::path root = fs::weakly_canonical(fs::absolute(step_dir)).parent_path();
  const fs::path target = fs::weakly_canonical(fs::absolute(path));
  const auto [end, at] = std::mismatch(root.begin(), root.end(), target.begin(), target.end());
  if (end != root.end() || at == target.end()) return "";  // not below the root
  const std::string first = at->string();
  if (first.rfind("step-", 0) == 0) {
    return "it is inside checkpoint directory " + (root / first).string() +
           " (its files could be overwritten, and a later run's rotation deletes it)";
  }
  if (std::next(at) == target.end() && (first == "latest" || first == "ledger.jsonl")) {
    return "it is " + (root / first).string() + ", a file of the checkpoints' directory";
  }
  return "";
}

ConsolidateStats consolidate_checkpoint(const std::string& ckpt, const std::string& out) {
  namespace fs = std::filesystem;
  const CheckpointReader r(ckpt);
  std::error_code ec;
  NURI_CHECK(!fs::is_directory(out, ec), "cannot write the model to ", out,
             ": it is a directory; give a file's path (e.g. ",
             (fs::path(out) / "model.safetensors").string(), ")");
  const std::string why = checkpoint_owns(r.dir(), out);
  NURI_CHECK(why.empty(), "cannot write the model to ", out, ": ", why, "; write it elsewhere");
  ModelConfig cfg;
  std::string config_json;
  try {
    config_json = nlohmann::json::parse(r.meta()).at("model").dump();
    cfg = model_config_from_json(config_json, r.dir() + ": model");
  } catch (const nlohmann::json::exception& e) {
    NURI_CHECK(false, "checkpoint ", r.dir(), " records no usable model config: ", e.what());
  }
  // In name order: the order the tensor checksum is taken in.
  std::vector<ParamSpec> layout = param_layout(cfg);
  std::sort(layout.begin(), layout.end(),
            [](const ParamSpec& a, const ParamSpec& b) { return a.name < b.name; });
  std::vector<SafetensorsPlanned> planned;
  for (const ParamSpec& p : layout) {
    NURI_CHECK(r.has_range(p.name), "checkpoint ", r.dir(), ": tensor '", p.name,
               "' is missing");
    NURI_CHECK(r.range_shape(p.name) == p.shape, "checkpoint ", r.dir(), ": tensor '", p.name,
               "' has shape ", shape_str(r.range_shape(p.name)), ", its model's is ",
               shape_str(p.shape));
    planned.push_back({p.name, DType::f32, p.shape});
  }
  auto alloc = std::make_shared<CpuAllocator>();  // counts what the export holds
  const std::string tmp = out + ".tmp-" + std::to_string(::getpid());  // one per process
  struct RemoveOnError {  // a failed export leaves no partial file behind (after `w` closes it)
    const std::string& tmp;
    ~RemoveOnError() {
      std::error_code ignored;
      if (std::uncaught_exceptions() > 0) fs::remove(tmp, ignored);
    }
  } remove_on_error{tmp};
  SafetensorsStreamWriter w(tmp, std::move(planned),
                            {{"nuri_model_config", config_json},
                             {"nuri_version", build_info().version}},
                            /*checksum=*/true);
  ConsolidateStats stats;
  for (const ParamSpec& p : layout) {
    Tensor t = Tensor::empty(p.shape, DType::f32, alloc);
    r.read_range(p.name, 0, p.numel(), t.view({p.numel()}));
    w.write(p.name, t);
    ++stats.tensors;
    stats.bytes += t.nbytes();
  }
  w.close();
  std::filesystem::rename(tmp, out);
  stats.peak_bytes = alloc->stats().peak_bytes;
  return stats;
}

}  // namespace nuri
