// Errors. Two kinds, kept apart (as c10 does):
//   NURI_CHECK(cond, ...)  : the caller gave bad input; the message says what and what to do.
//   NURI_ASSERT(cond, ...) : an internal invariant broke; a bug in nuri, not in the input.
// Both throw nuri::Error carrying "file:line" and the message built from the arguments,
// which may be any mix of streamable values: NURI_CHECK(d % h == 0, "n_head (", h, ") must ...").
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace nuri {

class Error : public std::runtime_error {
 public:
  Error(const std::string& what, const char* file, int line)
      : std::runtime_error(what), file_(file), line_(line) {}
  const char* file() const { return file_; }
  int line() const { return line_; }

 private:
  const char* file_;
  int line_;
};

namespace detail {

template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

[[noreturn]] void throw_error(const char* file, int line, const char* kind, const std::string& msg);

}  // namespace detail
}  // namespace nuri

#define NURI_CHECK(cond, ...)                                                                 \
  do {                                                                                      \
    if (!(cond)) {                                                                          \
      ::nuri::detail::throw_error(__FILE__, __LINE__, nullptr,                              \
                                  ::nuri::detail::concat(__VA_ARGS__));                     \
    }                                                                                       \
  } while (0)

#define NURI_ASSERT(cond, ...)                                                              \
  do {                                                                                      \
    if (!(cond)) {                                                                          \
      ::nuri::detail::throw_error(__FILE__, __LINE__, "internal error (a bug in nuri): " #cond, \
                                  ::nuri::detail::concat("" __VA_OPT__(, ) __VA_ARGS__));   \
    }                                                                                       \
  } while (0)
