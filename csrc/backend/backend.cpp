// Backend registry: which backends this build can create. No global instances: each call makes
// a new backend that owns its allocator.
#include "nuri/backend/backend.h"

#include <algorithm>

#include "backend/cpu/cpu_backend.h"

namespace nuri {

float clip_coefficient(float norm, float max_norm) {
  if (max_norm <= 0.f) return 1.f;
  return std::min(1.f, max_norm / (norm + 1e-6f));
}

std::vector<std::string> available_backends() { return {"cpu"}; }

std::unique_ptr<Backend> make_backend(const std::string& name) {
  if (name == "cpu") return std::make_unique<CpuBackend>();
  std::string list;
  for (const auto& n : available_backends()) list += (list.empty() ? "" : ", ") + n;
  NURI_CHECK(false, "unknown backend '", name, "'; this build has: ", list);
}

}  // namespace nuri
