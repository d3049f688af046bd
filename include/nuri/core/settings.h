// Settings described once. Each config struct lists its fields in one table: key, kind, bounds,
// help, command-line flag, and how to read and write the member. Everything else follows from
// the tables: reading and writing JSON and TOML, KEY=VALUE overrides, command-line flags and their
// --help, range checks, the Python properties and their type stubs.
//
// One design choice to know: a table is built by the layer that owns the struct (ModelConfig's
// in model/, TrainConfig's in train/, ParallelConfig's in parallel/), over that struct alone; the
// run's schema (nuri/train/run_config.h) lifts the tables into the sections of its RunConfig. So
// each layer declares its own settings, and the top assembles them without restating one.
#pragma once

#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "nuri/core/error.h"

namespace nuri {

/// A configuration that cannot be used: a key that does not exist, a value of the wrong type or
/// out of range, a file that does not parse. The message starts with the key's path
/// ("train.lr: expected a number, got 'fast'"); no file:line is appended, since the fault is the
/// user's input, not a place in nuri.
class ConfigError : public Error {
 public:
  explicit ConfigError(const std::string& what) : Error(what, "", 0) {}
};

enum class SettingKind { boolean, integer, number, text, choice };
/// "bool", "int", "float", "str", "choice".
const char* setting_kind_name(SettingKind k);

using SettingValue = std::variant<bool, int64_t, double, std::string>;

/// A value as a user writes it: true/false, integers, numbers as their shortest decimal, text.
std::string setting_value_str(const SettingValue& v);

/// The shortest decimal that reads back as the same float32 (0.001 for 1e-3f, not
/// 0.0010000000474974513), as a double.
double shortest_float(float f);

struct Setting {
  std::string key;  ///< "micro_batch"
  SettingKind kind = SettingKind::integer;
  std::string help;  ///< one line for --help and the docs
  std::string flag;  ///< command-line flag, "--micro-batch" ("--" + key with '-' for '_')
  std::string meta;  ///< the flag's value in --help: "N", "X", "NAME", ...
  std::vector<std::string> choices;  ///< allowed strings of a choice
  std::vector<std::string> aliases;  ///< other keys naming the same setting (backend: device)
  double min = -std::numeric_limits<double>::infinity();
  double max = std::numeric_limits<double>::infinity();
  bool min_exclusive = false;
  bool max_exclusive = false;
  /// Applied before the other keys of its section, which then override it (a model preset).
  bool first = false;
  std::function<SettingValue(const void* obj)> get;
  /// v has been through check(): of this setting's kind and within its bounds.
  std::function<void(void* obj, const SettingValue& v)> set;

  /// v converted to this setting's kind (an integer is a number; an integral number is an
  /// integer) and checked against the choices and bounds. Throws ConfigError naming `path`.
  SettingValue check(const SettingValue& v, const std::string& path) const;
  /// "an integer >= 1", "a number in [0, 1]", "one of 'skip', 'stop'", ...
  std::string expected() const;
};

/// The settings of one struct type T (get and set take a T*). Built with the typed adders,
/// each followed by optional modifiers of the setting just added:
///   Settings s;
///   s.add("steps", &TrainConfig::steps, "optimizer steps").at_least(1);
class Settings {
 public:
  template <class T, class M>
  Settings& add(std::string key, M T::*member, std::string help) {
    Setting s;
    s.key = std::move(key);
    s.help = std::move(help);
    if constexpr (std::is_same_v<M, bool>) {
      s.kind = SettingKind::boolean;
      s.get = [member](const void* o) { return SettingValue(static_cast<const T*>(o)->*member); };
      s.set = [member](void* o, const SettingValue& v) {
        static_cast<T*>(o)->*member = std::get<bool>(v);
      };
    } else if constexpr (std::is_integral_v<M>) {
      s.kind = SettingKind::integer;
      s.meta = "N";
      s.min = double(std::numeric_limits<M>::lowest());
      s.max = std::min(double(std::numeric_limits<M>::max()),
                       double(std::numeric_limits<int64_t>::max()));
      s.get = [member](const void* o) {
        return SettingValue(int64_t(static_cast<const T*>(o)->*member));
      };
      s.set = [member](void* o, const SettingValue& v) {
        static_cast<T*>(o)->*member = M(std::get<int64_t>(v));
      };
    } else if constexpr (std::is_same_v<M, float>) {
      s.kind = SettingKind::number;
      s.meta = "X";
      s.get = [member](const void* o) {
        return SettingValue(shortest_float(static_cast<const T*>(o)->*member));
      };
      s.set = [member](void* o, const SettingValue& v) {
        static_cast<T*>(o)->*member = float(std::get<double>(v));
      };
    } else if constexpr (std::is_same_v<M, double>) {
      s.kind = SettingKind::number;
      s.meta = "X";
      s.get = [member](const void* o) { return SettingValue(static_cast<const T*>(o)->*member); };
      s.set = [member](void* o, const SettingValue& v) {
        static_cast<T*>(o)->*member = std::get<double>(v);
      };
    } else {
      static_assert(std::is_same_v<M, std::string>,
                    "a setting is bool, integral, float, "
                    "double or std::string; enums go through choice()");
      s.kind = SettingKind::text;
      s.meta = "TEXT";
      s.get = [member](const void* o) { return SettingValue(static_cast<const T*>(o)->*member); };
      s.set = [member](void* o, const SettingValue& v) {
        static_cast<T*>(o)->*member = std::get<std::string>(v);
      };
    }
    return push(std::move(s));
  }

  /// An enum member written as one of `names` (its first pair's string is how it is shown).
  template <class T, class E>
  Settings& choice(std::string key, E T::*member, std::vector<std::pair<std::string, E>> names,
                   std::string help) {
    Setting s;
    s.key = std::move(key);
    s.kind = SettingKind::choice;
    s.help = std::move(help);
    for (const auto& [n, e] : names) s.choices.push_back(n);
    s.meta = join_choices(s.choices);
    s.get = [member, names](const void* o) {
      const E e = static_cast<const T*>(o)->*member;
      for (const auto& [n, v] : names) {
        if (v == e) return SettingValue(n);
      }
      NURI_ASSERT(false, "an enum value without a name");
      return SettingValue(std::string());
    };
    s.set = [member, names](void* o, const SettingValue& v) {
      for (const auto& [n, e] : names) {
        if (n == std::get<std::string>(v)) static_cast<T*>(o)->*member = e;
      }
    };
    return push(std::move(s));
  }

  /// A setting that is not one member (a unit conversion, a preset that resets a struct).
  Settings& custom(std::string key, SettingKind kind, std::string help,
                   std::function<SettingValue(const void*)> get,
                   std::function<void(void*, const SettingValue&)> set);

  // Modifiers of the setting added last.
  Settings& at_least(double lo);
  Settings& above(double lo);  ///< exclusive
  Settings& at_most(double hi);
  Settings& below(double hi);  ///< exclusive
  Settings& flag(std::string flag);
  Settings& meta(std::string meta);
  Settings& alias(std::string key);
  Settings& first();

  /// Adds every setting of `other` (over the same type) after these.
  Settings& append(const Settings& other);
  /// The same settings on an Outer object, reaching T through get_inner.
  Settings lifted(std::function<void*(void*)> inner) const;
  /// The same settings, each calling `then(obj, key)` after it set a value.
  Settings after_set(std::function<void(void*, const std::string&)> then) const;
  /// The same settings, each setting a value through `around(obj, key, set)`, which calls
  /// set() (what may be done before and after it: see the run config's model keys).
  Settings around_set(
      std::function<void(void*, const std::string&, const std::function<void()>&)> around) const;
  /// Throws ConfigError for the first member of obj outside its setting's bounds, named
  /// `prefix` + key (what a struct's validate() calls before its cross-field checks).
  void check_bounds(const void* obj, const std::string& prefix) const;

  const std::vector<Setting>& items() const { return items_; }
  const Setting* find(const std::string& key) const;  ///< by key or alias; null if none

 private:
  Settings& push(Setting s);
  static std::string join_choices(const std::vector<std::string>& c);
  std::vector<Setting> items_;
};

/// A config made of sections: each a name ("" for top-level keys) and its settings on the root
/// object. The readers below check everything and name the key's path in every error.
struct SettingsSection {
  std::string name;
  std::string help;
  Settings settings;
};
using Schema = std::vector<SettingsSection>;

/// The setting at `path` ("train.lr", "backend"); null when there is none.
const Setting* find_setting(const Schema& schema, const std::string& path,
                            const SettingsSection** section = nullptr);

/// Every setting's value as a JSON object in the schema's layout (sections as objects, in
/// schema order).
std::string settings_to_json(const Schema& schema, const void* root, int indent = 2);
/// Reads a JSON object in the schema's layout into root; only the keys given change. A
/// section given as a string sets its `first` setting (model = "gpt2-tiny"). `origin` prefixes
/// errors (a file name, or "").
void settings_from_json(const Schema& schema, void* root, const std::string& json,
                        const std::string& origin = "");
/// The same from TOML text (toml++).
void settings_from_toml(const Schema& schema, void* root, const std::string& toml,
                        const std::string& origin = "");
/// Reads a .toml or .json file (told apart by its name) into root.
void settings_from_file(const Schema& schema, void* root, const std::string& path);
/// Applies KEY=VALUE overrides in order: KEY a path ("train.lr"), VALUE in TOML syntax (1e-3,
/// true, "text"), or plain text where the setting is text or a choice ("prompt=1984" is the
/// text "1984").
void settings_apply_overrides(const Schema& schema, void* root,
                              const std::vector<std::string>& overrides);
/// One line per setting: "section.key  kind  default  help", for docs and tests.
std::string settings_reference(const Schema& schema, const void* defaults);

}  // namespace nuri
