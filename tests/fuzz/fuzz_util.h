// Shared pieces of the libFuzzer targets (tests/fuzz, built with -DNURI_FUZZ=ON by clang).
//
// nuri's readers take paths, so each input is written to files in a scratch directory of the
// process and read back through the same call a user's file goes through. The contract under
// test: whatever the bytes, a reader returns or throws nuri::Error (a message naming the file
// and what was expected). Any other exception escapes to libFuzzer, which reports it as a crash,
// as it does a sanitizer report, a timeout or an allocation over -rss_limit_mb.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "nuri/core/error.h"

namespace nuri::fuzz {

/// This process's scratch directory (created on first use, removed at exit).
inline const std::string& scratch() {
  static const std::string dir = [] {
    std::string tmpl = (std::filesystem::temp_directory_path() / "nuri-fuzz-XXXXXX").string();
    if (!mkdtemp(tmpl.data())) std::abort();
    static struct Remove {
      std::string d;
      ~Remove() {
        std::error_code ec;
        std::filesystem::remove_all(d, ec);
      }
    } remove{tmpl};
    return tmpl;
  }();
  return dir;
}

/// Writes `bytes` to scratch()/name and returns the path.
inline std::string put(const std::string& name, const std::string& bytes) {
  const std::string path = scratch() + "/" + name;
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(bytes.data(), std::streamsize(bytes.size()));
  return path;
}

/// The input split at each separator line "\n----8<----\n" into at most `n` parts (the last
/// part keeps any further separators); missing parts are empty. Seeds join files this way.
inline std::vector<std::string> parts(const uint8_t* data, size_t size, size_t n) {
  static const std::string sep = "\n----8<----\n";
  const std::string all(reinterpret_cast<const char*>(data), size);
  std::vector<std::string> out;
  size_t at = 0;
  while (out.size() + 1 < n) {
    const size_t k = all.find(sep, at);
    if (k == std::string::npos) break;
    out.push_back(all.substr(at, k - at));
    at = k + sep.size();
  }
  out.push_back(all.substr(at));
  out.resize(n);
  return out;
}

/// Runs `f`; nuri::Error is the expected refusal of a bad file, anything else propagates.
/// NURI_FUZZ_VERBOSE=1 prints each refusal (to see why a seed does not get far).
template <typename F>
void refused_or_read(F&& f) {
  static const bool verbose = std::getenv("NURI_FUZZ_VERBOSE") != nullptr;
  try {
    f();
  } catch (const nuri::Error& e) {
    if (verbose) std::fprintf(stderr, "refused: %s\n", e.what());
  }
}

}  // namespace nuri::fuzz
