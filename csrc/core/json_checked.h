// JSON in files users hand nuri (checkpoint manifests and their meta data, safetensors headers,
// tokenize.json, run configs, device profiles, metrics.jsonl, the ledger): parsed with a bound
// on nesting, and integers read from it. nlohmann's get<int64_t>() converts a float such as 3e22
// with a cast, which is undefined behaviour when it does not fit (fuzz_checkpoint found it);
// these take integers only and otherwise throw nlohmann::json::type_error, which each reader
// already turns into its message naming the file.
#pragma once

#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

namespace nuri::json_checked {

/// The deepest nesting parse() takes: the files nuri reads are a few levels deep.
inline constexpr int kMaxDepth = 64;

/// Json::parse of a file users hand nuri, refusing nesting deeper than kMaxDepth with a
/// nlohmann::json::out_of_range (which each reader turns into its message naming the file):
/// parsing is iterative, but dump(), comparisons and the readers' own walks recurse, so a
/// million nested brackets would overflow the stack there (a crash, not an error).
template <class Json = nlohmann::json, class Input>
Json parse(Input&& in) {
  return Json::parse(std::forward<Input>(in),
                     [](int depth, typename Json::parse_event_t, Json&) {
                       if (depth >= kMaxDepth) {
                         throw Json::out_of_range::create(
                             406, "nested more than " + std::to_string(kMaxDepth) +
                                      " levels deep",
                             static_cast<const Json*>(nullptr));
                       }
                       return true;
                     });
}

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
