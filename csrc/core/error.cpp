// nuri::Error construction: "message (file:line)". Kept out of line so the throw sites stay small.
#include "nuri/core/error.h"

#include <cstring>

namespace nuri::detail {

void throw_error(const char* file, int line, const char* kind, const std::string& msg) {
  const char* base = std::strrchr(file, '/');
  base = base ? base + 1 : file;
  std::string what;
  if (kind) {
    what = kind;
    if (!msg.empty()) what += ": " + msg;
  } else {
    what = msg;
  }
  what += " (" + std::string(base) + ":" + std::to_string(line) + ")";
  throw Error(what, file, line);
}

}  // namespace nuri::detail
