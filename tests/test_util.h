// Small helpers shared by the C++ test suites.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <string>

#include "nuri/core/error.h"

namespace nuri::test {

/// Sets the environment variable `var` to `value` for a scope, then restores it.
class ScopedEnv {
 public:
  ScopedEnv(const char* var, const char* value) : var_(var) {
    const char* old = std::getenv(var);
    had_ = old != nullptr;
    if (had_) saved_ = old;
    setenv(var, value, 1);
  }
  ~ScopedEnv() {
    if (had_) {
      setenv(var_, saved_.c_str(), 1);
    } else {
      unsetenv(var_);
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* var_;
  bool had_ = false;
  std::string saved_;
};

/// The message of the nuri::Error that f throws, or "no error".
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

/// Expects `part` inside `what` (an error message), showing the message when it is not.
inline void expect_has(const std::string& what, const std::string& part) {
  EXPECT_NE(what.find(part), std::string::npos) << "\"" << part << "\" not in: " << what;
}

/// Resets this process's peak resident set to its current one (Linux's /proc/self/clear_refs).
inline void reset_peak_rss() { std::ofstream("/proc/self/clear_refs") << "5"; }

/// This process's peak resident set in KiB (VmHWM), -1 when /proc does not say.
inline int64_t peak_rss_kib() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6));
  }
  return -1;
}

}  // namespace nuri::test
