// Small helpers shared by the C++ test suites.
#pragma once

#include <gtest/gtest.h>

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

/// Expects `part` inside `what` (an error message), showing the message when it is not.
inline void expect_has(const std::string& what, const std::string& part) {
  EXPECT_NE(what.find(part), std::string::npos) << "\"" << part << "\" not in: " << what;
}

}  // namespace nuri::test
