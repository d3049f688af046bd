// Minimal leveled logging to stderr. The level comes from NURI_LOG_LEVEL (debug|info|warn|error,
// default info) at first use, or from log_set_level().
#pragma once

#include <string>

#include "nuri/core/error.h"

namespace nuri {

enum class LogLevel { debug = 0, info = 1, warn = 2, error = 3 };

LogLevel log_level();
void log_set_level(LogLevel level);
void log_message(LogLevel level, const std::string& msg);

/// printf into a string (of any length): the lines a run and a plan print.
std::string strprintf(const char* format, ...) __attribute__((format(printf, 1, 2)));

}  // namespace nuri

#define NURI_LOG(level, ...)                                                       \
  do {                                                                             \
    if (::nuri::LogLevel::level >= ::nuri::log_level())                             \
      ::nuri::log_message(::nuri::LogLevel::level, ::nuri::detail::concat(__VA_ARGS__)); \
  } while (0)
