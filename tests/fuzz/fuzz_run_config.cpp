// Run configs: a JSON or TOML file read over the defaults and validated (RunConfig::load, what
// `nuri train --config FILE` does), then written back and read again, which must give the same
// settings. The first byte picks the format.
#include <cstdint>
#include <cstdlib>

#include "fuzz_util.h"
#include "nuri/train/run_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace nuri;
  if (size < 1) return 0;
  const std::string text(reinterpret_cast<const char*>(data + 1), size - 1);
  const std::string path = fuzz::put(data[0] & 1 ? "run.toml" : "run.json", text);
  fuzz::refused_or_read([&] {
    const RunConfig c = RunConfig::load(path);
    const std::string json = c.to_json();
    if (RunConfig::from_json(json).to_json() != json) std::abort();  // not a fixed point
  });
  return 0;
}
