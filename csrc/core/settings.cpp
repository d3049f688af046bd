// Settings tables and the readers and writers derived from them (nuri/core/settings.h). JSON goes
// through nlohmann-json; TOML is parsed by toml++ and walked as the same tree, so both formats
// accept and refuse exactly the same things with the same messages.
#include "nuri/core/settings.h"

#include <toml++/toml.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/json_checked.h"
#include "nuri/core/utf8.h"

namespace nuri {

using json = nlohmann::ordered_json;

namespace {

[[noreturn]] void fail(const std::string& msg) { throw ConfigError(msg); }

std::string number_str(double d) {
  if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 1e15) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f", d);
    return buf;
  }
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, d);
  return std::string(buf, r.ptr);
}

std::string bound_str(double d) {
  if (d == std::floor(d) && std::fabs(d) < 1e18) return std::to_string(int64_t(d));
  return number_str(d);
}

std::string join(const std::vector<std::string>& v, const std::string& sep) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : sep) + s;
  return out;
}

std::string path_of(const std::string& section, const std::string& key) {
  return section.empty() ? key : section + "." + key;
}

// How a JSON value reads in an error: text quoted, tables and lists by kind.
std::string show(const json& j) {
  if (j.is_string()) return "'" + j.get<std::string>() + "'";
  if (j.is_boolean()) return j.get<bool>() ? "true" : "false";
  if (j.is_object()) return "a table";
  if (j.is_array()) return "a list";
  if (j.is_null()) return "null";
  if (j.is_number_float()) return number_str(j.get<double>());
  return j.dump();
}

SettingValue value_of(const json& j, const Setting& s, const std::string& path) {
  if (j.is_boolean()) return j.get<bool>();
  if (j.is_number_unsigned()) {
    const uint64_t u = j.get<uint64_t>();
    if (u > uint64_t(std::numeric_limits<int64_t>::max())) {
      fail(path + ": " + std::to_string(u) + " is too large; expected " + s.expected());
    }
    return int64_t(u);
  }
  if (j.is_number_integer()) return j.get<int64_t>();
  if (j.is_number_float()) return j.get<double>();
  if (j.is_string()) return j.get<std::string>();
  fail(path + ": expected " + s.expected() + ", got " + show(j));
}

json json_of(const SettingValue& v) {
  return std::visit([](const auto& x) { return json(x); }, v);
}

// TOML's tree as JSON: tables, arrays, strings, integers, floats, booleans. Dates and times
// have no setting to go to; they are shown by their text.
// A TOML date or time where a setting's value is (from_toml), and where it was.
struct TomlDate {
  std::string text;
  uint32_t line, column;
};

json from_toml(const toml::node& n) {
  if (const auto* t = n.as_table()) {
    // In the document's order (toml++ keeps a table's keys sorted), so what is said first
    // is first, in errors too.
    std::vector<std::pair<const toml::key*, const toml::node*>> items;
    for (const auto& [k, v] : *t) items.emplace_back(&k, &v);
    std::stable_sort(items.begin(), items.end(), [](const auto& a, const auto& b) {
      const auto& pa = a.first->source().begin;
      const auto& pb = b.first->source().begin;
      return pa.line != pb.line ? pa.line < pb.line : pa.column < pb.column;
    });
    json out = json::object();
    for (const auto& [k, v] : items) out[std::string(k->str())] = from_toml(*v);
    return out;
  }
  if (const auto* a = n.as_array()) {
    json out = json::array();
    for (const auto& v : *a) out.push_back(from_toml(v));
    return out;
  }
  if (const auto* s = n.as_string()) return s->get();
  if (const auto* i = n.as_integer()) return i->get();
  if (const auto* f = n.as_floating_point()) return f->get();
  if (const auto* b = n.as_boolean()) return b->get();
  // A date, a time or both (out = 2024-06-01 unquoted): no setting takes one, and as text it
  // would not be what was written.
  std::ostringstream os;
  if (const auto* d = n.as_date())
    os << *d;
  else if (const auto* t = n.as_time())
    os << *t;
  else if (const auto* dt = n.as_date_time())
    os << *dt;
  throw TomlDate{os.str(), n.source().begin.line, n.source().begin.column};
}

// TOML allows characters beyond ASCII only in strings and comments. toml++ 3.3 (Debian 12's)
// reaches __builtin_unreachable() for some of them elsewhere (code points U+00A1..U+0499 and
// U+2C0E..U+3007 where it asks whether a character is whitespace: upstream issues #190 and #295,
// found here by tests/fuzz/fuzz_run_config), so such text is refused before toml++ sees it.
// Returns "" when the text is safe to parse, else what is wrong and where.
std::string toml_unsafe(const std::string& t) {
  enum { plain, comment, basic, literal, ml_basic, ml_literal } state = plain;
  int line = 1;
  bool after_continuation = false;  // in a multi-line basic string, after a line-ending backslash
  for (size_t i = 0; i < t.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(t[i]);
    const auto at = [&](const char* s) { return t.compare(i, std::strlen(s), s) == 0; };
    if (c == '\n') ++line;
    if (c >= 0x80 && (state == plain || after_continuation)) {
      return "line " + std::to_string(line) +
             (state == plain ? ": a character beyond ASCII outside a string or comment (TOML "
                               "allows them only in quoted strings and comments)"
                             : ": a character beyond ASCII right after a line-ending backslash "
                               "in a multi-line string; write it as \\uXXXX or end the line "
                               "before it differently");
    }
    if (after_continuation && c != ' ' && c != '\t' && c != '\n' && c != '\r') {
      after_continuation = false;
    }
    switch (state) {
      case plain:
        if (c == '#') state = comment;
        else if (at("\"\"\"")) state = ml_basic, i += 2;
        else if (at("'''")) state = ml_literal, i += 2;
        else if (c == '"') state = basic;
        else if (c == '\'') state = literal;
        break;
      case comment:
        if (c == '\n') state = plain;
        break;
      case basic:
        if (c == '\\') ++i;
        else if (c == '"' || c == '\n') state = plain;
        break;
      case literal:
        if (c == '\'' || c == '\n') state = plain;
        break;
      case ml_basic:
        if (c == '\\') {
          size_t k = i + 1;
          while (k < t.size() && (t[k] == ' ' || t[k] == '\t' || t[k] == '\r')) ++k;
          if (k < t.size() && t[k] == '\n') after_continuation = true;
          else ++i;  // an escape: its character is not the string's end
        } else if (at("\"\"\"")) {
          state = plain, i += 2;
        }
        break;
      case ml_literal:
        if (at("'''")) state = plain, i += 2;
        break;
    }
  }
  return "";
}

json parse_toml(const std::string& text, const std::string& origin) {
  if (const std::string why = toml_unsafe(text); !why.empty()) {
    fail((origin.empty() ? "" : origin + ": ") + "not valid TOML: " + why);
  }
  try {
    return from_toml(toml::parse(text));
  } catch (const TomlDate& d) {
    fail((origin.empty() ? "" : origin + ": ") + "line " + std::to_string(d.line) + ", column " +
         std::to_string(d.column) + ": " + d.text + " is a TOML date or time, which no setting "
         "takes; quote it for text (\"" + d.text + "\")");
  } catch (const toml::parse_error& e) {
    std::ostringstream os;
    os << (origin.empty() ? "" : origin + ": ") << "not valid TOML: " << e.description()
       << " (line " << e.source().begin.line << ", column " << e.source().begin.column << ")";
    fail(os.str());
  }
}

std::vector<std::string> known_keys(const Settings& s) {
  std::vector<std::string> keys;
  for (const Setting& x : s.items()) keys.push_back(x.key);
  std::sort(keys.begin(), keys.end());
  return keys;
}

// Applies one table of a section: the `first` setting before the rest; aliases that disagree
// with their setting are refused.
void apply_table(const SettingsSection& sec, void* root, const json& table,
                 const std::string& prefix, const std::vector<std::string>& extra_keys = {}) {
  std::vector<std::pair<const Setting*, const json*>> todo;
  std::vector<std::string> given;  // the key each setting was given under
  for (const auto& [key, value] : table.items()) {
    if (std::find(extra_keys.begin(), extra_keys.end(), key) != extra_keys.end()) continue;
    const Setting* s = sec.settings.find(key);
    if (!s) {
      std::vector<std::string> known = known_keys(sec.settings);
      known.insert(known.end(), extra_keys.begin(), extra_keys.end());
      std::sort(known.begin(), known.end());
      fail(path_of(prefix, key) + ": unknown key; known keys: " + join(known, ", "));
    }
    for (size_t i = 0; i < todo.size(); ++i) {
      if (todo[i].first == s) {
        const SettingValue a = s->check(value_of(*todo[i].second, *s, path_of(prefix, given[i])),
                                        path_of(prefix, given[i]));
        const SettingValue b =
            s->check(value_of(value, *s, path_of(prefix, key)), path_of(prefix, key));
        if (a != b) {
          fail(given[i] + " (" + show(*todo[i].second) + ") and " + key + " (" + show(value) +
               ") name the same setting and disagree; give one of them");
        }
      }
    }
    todo.emplace_back(s, &value);
    given.push_back(key);
  }
  // The `first` setting before the others; errors name the key as given (an alias too).
  std::vector<size_t> order(todo.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_partition(order.begin(), order.end(), [&](size_t i) { return todo[i].first->first; });
  for (size_t i : order) {
    const auto& [s, value] = todo[i];
    const std::string path = path_of(prefix, given[i]);
    s->set(root, s->check(value_of(*value, *s, path), path));
  }
}

void apply_json(const Schema& schema, void* root, const json& doc, const std::string& origin) {
  const std::string where = origin.empty() ? "" : origin + ": ";
  try {
    if (!doc.is_object()) fail("expected a table (JSON object) at the top level");
    const SettingsSection* top = nullptr;
    std::vector<std::string> section_names;
    for (const auto& sec : schema) {
      if (sec.name.empty())
        top = &sec;
      else
        section_names.push_back(sec.name);
    }
    // Top-level keys first (sections are keys of the top table too), then each section.
    json top_table = json::object();
    for (const auto& [key, value] : doc.items()) {
      if (std::find(section_names.begin(), section_names.end(), key) == section_names.end()) {
        top_table[key] = value;
      }
    }
    if (top) {
      apply_table(*top, root, top_table, "", section_names);
    } else if (!top_table.empty()) {
      fail(top_table.begin().key() + ": unknown key; known keys: " + join(section_names, ", "));
    }
    for (const auto& sec : schema) {
      if (sec.name.empty() || !doc.contains(sec.name)) continue;
      const json& value = doc[sec.name];
      if (value.is_string()) {  // model = "gpt2-tiny": the section's first setting
        const auto it = std::find_if(sec.settings.items().begin(), sec.settings.items().end(),
                                     [](const Setting& s) { return s.first; });
        if (it == sec.settings.items().end()) {
          fail(sec.name + ": expected a table, got " + show(value));
        }
        apply_table(sec, root, json{{it->key, value}}, sec.name);
      } else if (!value.is_object()) {
        fail(sec.name + ": expected a table, got " + show(value));
      } else {
        apply_table(sec, root, value, sec.name);
      }
    }
  } catch (const ConfigError& e) {
    throw ConfigError(where + e.what());
  }
}

}  // namespace

const char* setting_kind_name(SettingKind k) {
  switch (k) {
    case SettingKind::boolean:
      return "bool";
    case SettingKind::integer:
      return "int";
    case SettingKind::number:
      return "float";
    case SettingKind::text:
      return "str";
    case SettingKind::choice:
      return "choice";
  }
  return "?";
}

double shortest_float(float f) {
  if (!std::isfinite(f)) return double(f);
  char buf[32];
  const auto r = std::to_chars(buf, buf + sizeof buf, f);
  double d = 0;
  std::from_chars(buf, r.ptr, d);
  return d;
}

std::string setting_value_str(const SettingValue& v) {
  if (const bool* b = std::get_if<bool>(&v)) return *b ? "true" : "false";
  if (const int64_t* i = std::get_if<int64_t>(&v)) return std::to_string(*i);
  if (const double* d = std::get_if<double>(&v)) {
    char buf[64];
    const auto r = std::to_chars(buf, buf + sizeof buf, *d);
    return std::string(buf, r.ptr);
  }
  return std::get<std::string>(v);
}

std::string Setting::expected() const {
  std::string what;
  switch (kind) {
    case SettingKind::boolean:
      return "true or false";
    case SettingKind::text:
      return "a string";
    case SettingKind::choice: {
      std::vector<std::string> q;
      for (const auto& c : choices) q.push_back("'" + c + "'");
      return "one of " + join(q, ", ");
    }
    case SettingKind::integer:
      what = "an integer";
      break;
    case SettingKind::number:
      what = "a number";
      break;
  }
  const bool has_min = std::isfinite(min) && !(kind == SettingKind::integer && min <= -9.2e18);
  const bool has_max = std::isfinite(max) && !(kind == SettingKind::integer && max >= 2.1e9);
  if (has_min && has_max) {
    what += std::string(" in ") + (min_exclusive ? "(" : "[") + bound_str(min) + ", " +
            bound_str(max) + (max_exclusive ? ")" : "]");
  } else if (has_min) {
    what += (min_exclusive ? " > " : " >= ") + bound_str(min);
  } else if (has_max) {
    what += (max_exclusive ? " < " : " <= ") + bound_str(max);
  }
  return what;
}

SettingValue Setting::check(const SettingValue& v, const std::string& path) const {
  auto wrong = [&]() -> SettingValue {
    std::string got;
    if (const std::string* s = std::get_if<std::string>(&v))
      got = "'" + *s + "'";
    else
      got = setting_value_str(v);
    fail(path + ": expected " + expected() + ", got " + got);
  };
  SettingValue out = v;
  switch (kind) {
    case SettingKind::boolean:
      if (!std::holds_alternative<bool>(v)) return wrong();
      return v;
    case SettingKind::text: {
      if (!std::holds_alternative<std::string>(v)) return wrong();
      // Settings are written back as JSON (config.json, the ranks' comparison): UTF-8 only.
      const std::string& text = std::get<std::string>(v);
      const size_t bad = first_invalid_utf8(text);
      if (bad != std::string::npos) {
        char byte[8];
        std::snprintf(byte, sizeof byte, "0x%02X", unsigned(static_cast<unsigned char>(text[bad])));
        fail(path + ": not UTF-8 text (byte " + byte + " at offset " + std::to_string(bad) +
             "); settings are UTF-8: convert the path or text (iconv -f latin1 -t utf-8, say)");
      }
      return v;
    }
    case SettingKind::choice: {
      const std::string* s = std::get_if<std::string>(&v);
      if (!s || std::find(choices.begin(), choices.end(), *s) == choices.end()) return wrong();
      return v;
    }
    case SettingKind::integer: {
      if (const double* d = std::get_if<double>(&v)) {
        if (!(std::isfinite(*d) && *d == std::floor(*d) && std::fabs(*d) < 9.2e18)) return wrong();
        out = int64_t(*d);
      } else if (!std::holds_alternative<int64_t>(v)) {
        return wrong();
      }
      const int64_t i = std::get<int64_t>(out);
      if (double(i) < min || double(i) > max || (min_exclusive && double(i) == min) ||
          (max_exclusive && double(i) == max)) {
        return wrong();
      }
      return out;
    }
    case SettingKind::number: {
      if (const int64_t* i = std::get_if<int64_t>(&v))
        out = double(*i);
      else if (!std::holds_alternative<double>(v))
        return wrong();
      const double d = std::get<double>(out);
      if (!std::isfinite(d) || d < min || d > max || (min_exclusive && d == min) ||
          (max_exclusive && d == max)) {
        return wrong();
      }
      return out;
    }
  }
  return wrong();
}

// ---- Settings ------------------------------------------------------------------------------

Settings& Settings::push(Setting s) {
  NURI_ASSERT(!find(s.key), "setting ", s.key, " declared twice");
  if (s.flag.empty()) {
    s.flag = "--" + s.key;
    std::replace(s.flag.begin(), s.flag.end(), '_', '-');
  }
  items_.push_back(std::move(s));
  return *this;
}

std::string Settings::join_choices(const std::vector<std::string>& c) { return join(c, "|"); }

Settings& Settings::custom(std::string key, SettingKind kind, std::string help,
                           std::function<SettingValue(const void*)> get,
                           std::function<void(void*, const SettingValue&)> set) {
  Setting s;
  s.key = std::move(key);
  s.kind = kind;
  s.help = std::move(help);
  s.meta = kind == SettingKind::number ? "X" : kind == SettingKind::integer ? "N" : "TEXT";
  s.get = std::move(get);
  s.set = std::move(set);
  return push(std::move(s));
}

Settings& Settings::at_least(double lo) {
  items_.back().min = lo;
  items_.back().min_exclusive = false;
  return *this;
}

Settings& Settings::above(double lo) {
  items_.back().min = lo;
  items_.back().min_exclusive = true;
  return *this;
}

Settings& Settings::at_most(double hi) {
  items_.back().max = hi;
  return *this;
}

Settings& Settings::below(double hi) {
  items_.back().max = hi;
  items_.back().max_exclusive = true;
  return *this;
}

Settings& Settings::flag(std::string f) {
  items_.back().flag = std::move(f);
  return *this;
}

Settings& Settings::meta(std::string m) {
  items_.back().meta = std::move(m);
  return *this;
}

Settings& Settings::alias(std::string key) {
  items_.back().aliases.push_back(std::move(key));
  return *this;
}

Settings& Settings::first() {
  items_.back().first = true;
  return *this;
}

Settings& Settings::append(const Settings& other) {
  for (const Setting& s : other.items_) push(s);
  return *this;
}

Settings Settings::lifted(std::function<void*(void*)> inner) const {
  Settings out;
  for (Setting s : items_) {
    auto get = s.get;
    auto set = s.set;
    s.get = [get, inner](const void* o) { return get(inner(const_cast<void*>(o))); };
    s.set = [set, inner](void* o, const SettingValue& v) { set(inner(o), v); };
    out.items_.push_back(std::move(s));
  }
  return out;
}

Settings Settings::after_set(std::function<void(void*, const std::string&)> then) const {
  Settings out;
  for (Setting s : items_) {
    s.set = [set = s.set, then, key = s.key](void* o, const SettingValue& v) {
      set(o, v);
      then(o, key);
    };
    out.items_.push_back(std::move(s));
  }
  return out;
}

Settings Settings::around_set(
    std::function<void(void*, const std::string&, const std::function<void()>&)> around) const {
  Settings out;
  for (Setting s : items_) {
    s.set = [set = s.set, around, key = s.key](void* o, const SettingValue& v) {
      around(o, key, [&] { set(o, v); });
    };
    out.items_.push_back(std::move(s));
  }
  return out;
}

void Settings::check_bounds(const void* obj, const std::string& prefix) const {
  for (const Setting& s : items_) s.check(s.get(obj), prefix + s.key);
}

const Setting* Settings::find(const std::string& key) const {
  for (const Setting& s : items_) {
    if (s.key == key) return &s;
    if (std::find(s.aliases.begin(), s.aliases.end(), key) != s.aliases.end()) return &s;
  }
  return nullptr;
}

// ---- schemas ---------------------------------------------------------------------------------

const Setting* find_setting(const Schema& schema, const std::string& path,
                            const SettingsSection** section) {
  const size_t dot = path.find('.');
  const std::string sec = dot == std::string::npos ? "" : path.substr(0, dot);
  const std::string key = dot == std::string::npos ? path : path.substr(dot + 1);
  for (const auto& s : schema) {
    if (s.name != sec) continue;
    if (section) *section = &s;
    return s.settings.find(key);
  }
  return nullptr;
}

std::string settings_to_json(const Schema& schema, const void* root, int indent) {
  json doc = json::object();
  for (const auto& sec : schema) {
    json& table = sec.name.empty() ? doc : doc[sec.name];
    if (!sec.name.empty()) table = json::object();
    for (const Setting& s : sec.settings.items()) table[s.key] = json_of(s.get(root));
  }
  return doc.dump(indent);
}

void settings_from_json(const Schema& schema, void* root, const std::string& text,
                        const std::string& origin) {
  json doc;
  try {
    doc = json_checked::parse<json>(text);
  } catch (const json::exception& e) {  // parse_error, or out_of_range for 1e999
    fail((origin.empty() ? "" : origin + ": ") + "not valid JSON: " + e.what());
  }
  apply_json(schema, root, doc, origin);
}

void settings_from_toml(const Schema& schema, void* root, const std::string& text,
                        const std::string& origin) {
  apply_json(schema, root, parse_toml(text, origin), origin);
}

void settings_from_file(const Schema& schema, void* root, const std::string& path) {
  const bool is_json = path.size() >= 5 && path.compare(path.size() - 5, 5, ".json") == 0;
  const bool is_toml = path.size() >= 5 && path.compare(path.size() - 5, 5, ".toml") == 0;
  std::ifstream in(path, std::ios::binary);
  if (!in.good()) {
    fail("cannot read config " + path + ": " + std::strerror(errno));
  }
  if (!is_json && !is_toml) fail(path + ": a config file must end in .toml or .json");
  std::stringstream ss;
  ss << in.rdbuf();
  if (is_json)
    settings_from_json(schema, root, ss.str(), path);
  else
    settings_from_toml(schema, root, ss.str(), path);
}

void settings_apply_overrides(const Schema& schema, void* root,
                              const std::vector<std::string>& overrides) {
  std::vector<std::string> section_names;
  for (const auto& s : schema) {
    if (!s.name.empty()) section_names.push_back(s.name);
  }
  for (const std::string& item : overrides) {
    const size_t eq = item.find('=');
    std::string key = eq == std::string::npos ? "" : item.substr(0, eq);
    key.erase(0, key.find_first_not_of(" \t"));
    key.erase(key.find_last_not_of(" \t") + 1);
    if (eq == std::string::npos || key.empty()) {
      fail("override '" + item + "': expected KEY=VALUE, e.g. train.lr=1e-3");
    }
    const std::string raw = item.substr(eq + 1);
    const SettingsSection* sec = nullptr;
    const Setting* s = nullptr;
    if (std::find(section_names.begin(), section_names.end(), key) != section_names.end()) {
      find_setting(schema, key + ".x", &sec);  // model=NAME: the section's first setting
      for (const Setting& x : sec->settings.items()) {
        if (x.first) s = &x;
      }
      if (!s) fail(key + ": a section takes SECTION.KEY=VALUE");
      key += "." + s->key;
    } else {
      s = find_setting(schema, key, &sec);
    }
    if (!s) {
      const size_t dot = key.find('.');
      if (!sec) {
        fail(key + ": unknown " +
             (dot == std::string::npos ? "key" : "section '" + key.substr(0, dot) + "'") +
             "; sections: " + join(section_names, ", "));
      }
      std::vector<std::string> known = known_keys(sec->settings);
      if (sec->name.empty()) known.insert(known.end(), section_names.begin(), section_names.end());
      fail(key + ": unknown key; known keys: " + join(known, ", "));
    }
    // TOML syntax when it parses (1e-3, true, "text"), else the text itself.
    SettingValue v = raw;
    const std::string doc = "v = " + raw;
    if (toml_unsafe(doc).empty()) {  // (prompt=café is text: toml++ must not see it bare)
      try {
        const toml::table t = toml::parse(doc);
        const json j = from_toml(*t.get("v"));
        if (!j.is_object() && !j.is_array()) v = value_of(j, *s, key);
      } catch (const toml::parse_error&) {
      } catch (const TomlDate&) {  // out=2024-06-01 is the text "2024-06-01"
      }
    }
    if ((s->kind == SettingKind::text || s->kind == SettingKind::choice) &&
        !std::holds_alternative<std::string>(v)) {
      v = raw;  // prompt=1984 is the text "1984"
    }
    // Numbers TOML does not write but a command line may: lr=.001, lr=5., steps=08.
    if ((s->kind == SettingKind::number || s->kind == SettingKind::integer) &&
        std::holds_alternative<std::string>(v) && !raw.empty()) {
      double d = 0;
      const auto [end, ec] = std::from_chars(raw.data(), raw.data() + raw.size(), d);
      if (ec == std::errc() && end == raw.data() + raw.size()) v = d;
    }
    s->set(root, s->check(v, key));
  }
}

std::string settings_reference(const Schema& schema, const void* defaults) {
  std::ostringstream os;
  for (const auto& sec : schema) {
    for (const Setting& s : sec.settings.items()) {
      os << path_of(sec.name, s.key) << "  " << setting_kind_name(s.kind) << "  "
         << setting_value_str(s.get(defaults)) << "  " << s.help << "\n";
    }
  }
  return os.str();
}

}  // namespace nuri
