// Checkpoint manifests: a real checkpoint of two tensors (one stored as ranges, one as a
// tensor-parallel block, as CheckpointWriter writes them) is made once; each input replaces its
// manifest.json and `latest` (the input's two parts, fuzz_util.h). CheckpointReader opens the
// root and every range is read in part and whole, so the manifest's slices must agree with the
// file they point into (whose SHA-256 is real: a mutated checksum is refused before any read).
//   NURI_FUZZ_PRINT_SEED=1 fuzz_checkpoint -runs=0   prints the real manifest (the seed),
// without its own checksum ("manifest_sha256": a manifest without one is read as those of
// before it were), so that mutations reach the checks of its fields rather than stopping at the
// checksum (tested in tests/ckpt/test_ckpt.cpp).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "fuzz_util.h"
#include "nuri/ckpt/checkpoint.h"

namespace {

std::string g_step_dir;

void write_checkpoint() {
  using namespace nuri;
  const std::string root = nuri::fuzz::scratch() + "/ckpt";
  CheckpointWriter w(root, 2, nullptr);
  Tensor a = Tensor::empty({6}, DType::f32), b = Tensor::empty({2, 3}, DType::f32);
  for (int i = 0; i < 6; ++i) {
    a.data<float>()[i] = float(i) - 2.5f;
    b.data<float>()[i] = float(i * i);
  }
  w.add_range("emb", 10, 0, a, {2, 5});
  w.add_range("emb", 10, 6, Tensor::empty({4}, DType::f32), {2, 5});
  w.add_block("proj", {3, 4}, 1, 1, b);
  w.add_block("proj", {3, 4}, 0, 0, Tensor::zeros({1, 4}, DType::f32));
  w.add_block("proj", {3, 4}, 1, 0, Tensor::zeros({2, 1}, DType::f32));
  w.set_meta(R"({"step": 2, "data": {"epoch": 0}})");
  g_step_dir = w.commit(1);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  write_checkpoint();
  if (std::getenv("NURI_FUZZ_PRINT_SEED")) {
    std::ifstream in(g_step_dir + "/manifest.json");
    nlohmann::json manifest = nlohmann::json::parse(in);
    manifest.erase("manifest_sha256");
    std::stringstream s;
    s << manifest.dump(1) << "\n\n----8<----\n"
      << std::filesystem::path(g_step_dir).filename().string();
    std::fputs(s.str().c_str(), stdout);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace nuri;
  const auto files = fuzz::parts(data, size, 2);
  std::ofstream(g_step_dir + "/manifest.json", std::ios::trunc) << files[0];
  std::ofstream(fuzz::scratch() + "/ckpt/latest", std::ios::trunc) << files[1];
  fuzz::refused_or_read([&] {
    CheckpointReader r(fuzz::scratch() + "/ckpt");
    (void)r.meta();
    for (const std::string& name : r.range_names()) {
      const int64_t n = r.range_numel(name);
      if (n < 0 || n > (int64_t(1) << 20)) continue;  // a claim the reads below would allocate
      (void)r.range_shape(name);
      Tensor all = Tensor::empty({n}, DType::f32);
      fuzz::refused_or_read([&] { r.read_range(name, 0, n, all); });
      if (n > 2) r.read_range(name, 1, n - 1, Tensor::empty({n - 2}, DType::f32));
    }
  });
  return 0;
}
