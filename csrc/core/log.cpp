// Leveled logging to stderr; one line per message, written with a single call so lines from
// different threads do not interleave.
#include "nuri/core/log.h"

#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace nuri {
namespace {

int level_from_env() {
  const char* s = std::getenv("NURI_LOG_LEVEL");
  if (!s) return int(LogLevel::info);
  if (!std::strcmp(s, "debug")) return int(LogLevel::debug);
  if (!std::strcmp(s, "warn")) return int(LogLevel::warn);
  if (!std::strcmp(s, "error")) return int(LogLevel::error);
  return int(LogLevel::info);
}

std::atomic<int>& level_ref() {
  static std::atomic<int> level{level_from_env()};
  return level;
}

}  // namespace

LogLevel log_level() { return LogLevel(level_ref().load(std::memory_order_relaxed)); }
void log_set_level(LogLevel level) { level_ref().store(int(level)); }

void log_message(LogLevel level, const std::string& msg) {
  static const char* names[] = {"debug", "info", "warn", "error"};
  std::string line = "[nuri " + std::string(names[int(level)]) + "] " + msg + "\n";
  std::fwrite(line.data(), 1, line.size(), stderr);
}

std::string strprintf(const char* format, ...) {
  va_list ap, again;
  va_start(ap, format);
  va_copy(again, ap);
  const int n = std::vsnprintf(nullptr, 0, format, ap);
  va_end(ap);
  std::string out(size_t(n > 0 ? n : 0), '\0');
  if (n > 0) std::vsnprintf(out.data(), size_t(n) + 1, format, again);
  va_end(again);
  return out;
}

}  // namespace nuri
