// Small helpers shared by the C++ test suites.
#pragma once

#include <functional>
#include <string>

#include "nuri/core/error.h"

namespace nuri::test {

/// The message of the nuri::Error that f throws, or "no error".
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

}  // namespace nuri::test
