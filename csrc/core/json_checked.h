// Integers read from JSON in files users hand nuri (checkpoint manifests and their meta data,
// tokenize.json, metrics.jsonl). nlohmann's get<int64_t>() converts a float such as 3e22 with a
// cast, which is undefined behaviour when it does not fit (fuzz_checkpoint found it); these take
// integers only and otherwise throw nlohmann::json::type_error, which each reader already turns
// into its message naming the file.
#pragma once

#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace nuri::json_checked {

inline int64_t integer(const nlohmann::json& j) {
  const bool fits = j.is_number_integer() &&
                    (!j.is_number_unsigned() ||
                     j.get<uint64_t>() <= uint64_t(std::numeric_limits<int64_t>::max()));
  if (!fits) {
    throw nlohmann::json::type_error::create(302, "expected an integer, got " + j.dump(), &j);
  }
  return j.get<int64_t>();
}

inline std::vector<int64_t> integers(const nlohmann::json& j) {
  if (!j.is_array()) {
    throw nlohmann::json::type_error::create(302, "expected a list of integers, got " + j.dump(),
                                             &j);
  }
  std::vector<int64_t> out;
  for (const auto& x : j) out.push_back(integer(x));
  return out;
}

}  // namespace nuri::json_checked
