// The run's schema: the sections' tables lifted onto RunConfig, the run-only sections, and the
// command line derived from them (nuri/train/run_config.h).
#include "nuri/train/run_config.h"

#include <algorithm>
#include <functional>
#include <sstream>

#include "nuri/backend/build_info.h"
#include "nuri/data/corpus.h"
#include "nuri/train/plan.h"
#include "nuri/train/preemption.h"

namespace nuri {

namespace {

template <class S>
Settings lift(const Settings& s, S RunConfig::*member) {
  return s.lifted(
      [member](void* run) -> void* { return &(static_cast<RunConfig*>(run)->*member); });
}

Schema build_schema() {
  Schema schema;

  Settings top;
  top.add("backend", &RunConfig::backend,
          "cpu, cuda (each rank on its local rank's GPU), cuda:N, or cuda-emu (emulated build)")
      .alias("device")
      .meta("NAME");
  top.add("out", &RunConfig::out,
          "run directory: config.json, metrics.jsonl, model.safetensors, sample.txt ('': none)")
      .meta("DIR");
  top.add("log_every", &RunConfig::log_every,
          "a progress line every N steps when not on a terminal (or with --quiet)")
      .at_least(1);
  top.add("quiet", &RunConfig::quiet, "progress as lines even on a terminal (for batch jobs)");
  top.add("expect_val_below", &RunConfig::expect_val_below,
          "> 0: exit with status 3 unless the final validation loss is below this")
      .at_least(0);
  top.add("layout", &RunConfig::layout,
          "manual: the parallel and batch settings as given; auto: the planner's first choice "
          "(tp, pp, ZeRO stage, recomputation, sp, micro-batch) for the job's ranks and the "
          "device profile, keeping the global batch (train.global_batch, or micro_batch x "
          "grad_accum x ranks)")
      .meta("manual|auto");
  top.add("profile", &RunConfig::profile,
          "device profile for layout auto and the ledger's MFU: h100-sxm-80gb, a100-sxm-80gb, "
          "rtx-4090, rtx-3090, cpu, or a file from nuri calibrate ('': cpu on the CPU backend)")
      .meta("NAME|FILE");
  schema.push_back({"", "run", std::move(top)});

  Settings model;
  model
      .custom(
          "preset", SettingKind::text,
          "start from this preset (the other model keys override it); '' for none",
          [](const void* o) { return SettingValue(static_cast<const RunConfig*>(o)->preset); },
          [](void* o, const SettingValue& v) {
            auto* r = static_cast<RunConfig*>(o);
            const std::string& name = std::get<std::string>(v);
            if (!name.empty()) {
              const auto names = model_preset_names();
              if (std::find(names.begin(), names.end(), name) == names.end()) {
                std::string list;
                for (const auto& n : names) list += (list.empty() ? "" : ", ") + n;
                throw ConfigError("model.preset: unknown preset '" + name + "'; presets: " + list);
              }
              r->model = model_preset(name);
            }
            r->preset = name;
            r->model_keys_given.clear();  // the preset replaced what they set
          })
      .flag("--model")
      .meta("NAME")
      .first();
  // The fields the preset sets, each recorded as given when set. n_kv_head given before n_head
  // stays what it says (n_head's own setting makes it follow on a full-attention model, which is
  // right only when the run did not give it).
  model.append(lift(model_settings(), &RunConfig::model)
                   .around_set([](void* run, const std::string& key,
                                  const std::function<void()>& set) {
                     auto* r = static_cast<RunConfig*>(run);
                     auto& given = r->model_keys_given;
                     const bool kv_given =
                         std::find(given.begin(), given.end(), "n_kv_head") != given.end();
                     const int64_t kv = r->model.n_kv_head;
                     set();
                     if (key == "n_head" && kv_given) r->model.n_kv_head = kv;
                     if (std::find(given.begin(), given.end(), key) == given.end()) {
                       given.push_back(key);
                     }
                   }));
  schema.push_back({"model", "model", std::move(model)});

  schema.push_back({"train", "training", lift(train_settings(), &RunConfig::train)});
  Settings parallel = lift(parallel_settings(), &RunConfig::parallel);
  schema.push_back({"parallel",
                    "several processes (mpirun, srun, torchrun: micro_batch and "
                    "grad_accum are per rank)",
                    std::move(parallel)});

  schema.push_back({"checkpoint",
                    "checkpoints (a shared pool: resume anywhere, any number of "
                    "ranks)",
                    lift(checkpoint_settings(), &RunConfig::checkpoint)});
  schema.push_back({"data", "data", lift(data_settings(), &RunConfig::data)});
  schema.push_back({"sample", "the sample after training (byte-level models)",
                    lift(sample_settings(), &RunConfig::sample)});
  return schema;
}

}  // namespace

const Settings& checkpoint_settings() {
  static const Settings s = [] {
    Settings ck;
    using K = CheckpointConfig;
    ck.add("dir", &K::dir, "save checkpoints under DIR and resume from its newest one on start")
        .flag("--ckpt-dir")
        .meta("DIR");
    ck.add("save_every", &K::save_every, "also save every N steps (0: at the end and when stopped)")
        .at_least(0);
    ck.add("keep", &K::keep, "keep the newest K checkpoints").at_least(1).at_most(1 << 30);
    ck.add("async_save", &K::async_save,
           "write the periodic saves on a background thread (committed when every rank wrote)");
    ck.add("resume", &K::resume,
           "resume from the newest checkpoint under dir (false: start fresh, in a dir without "
           "checkpoints)");
    ck.add("check_data", &K::check_data,
           "refuse to resume a checkpoint saved training on other data (false: go on at its "
           "position in this data's sample order)");
    ck.add("signals", &K::signals,
           "signals that mean preempted: checkpoint at the next step boundary, exit 75 (with "
           "checkpoint.dir; without one they end the run as they would any program). Ctrl-C "
           "is apart: it stops the run at a step boundary with 130")
        .meta("LIST");
    ck.add("time_limit", &K::time_limit,
           "stop the same way before S seconds of wall clock have passed (0: no limit)")
        .at_least(0)
        .meta("S");
    ck.add("init", &K::init,
           "start from the weights of this model file (nuri.save's, a run's model.safetensors, "
           "export --out's) when there is no checkpoint to resume; the model is the file's "
           "(model settings, if given, must agree)")
        .flag("--init")
        .meta("FILE");
    return ck;
  }();
  return s;
}

const Settings& data_settings() {
  static const Settings s = [] {
    Settings data;
    data.add("train", &DataConfig::train,
             "text (byte tokens), llm.c token file (.bin) or 1-D .npy of token ids; '': Debian's "
             "license texts (or a generated corpus)")
        .flag("--data")
        .meta("FILE");
    data.add("val", &DataConfig::val, "validation data ('': the last 10% of train)").meta("FILE");
    data.add("format", &DataConfig::format,
             "how the files are read: auto (token files by their header, .bin/.npy without one "
             "refused, else text), text, llmc, npy, uint16 or uint32 (headerless arrays, as "
             "nanoGPT's train.bin)")
        .meta("FORMAT");
    data.add("tokenizer", &DataConfig::tokenizer,
             "the model's tokenizer (a tokenizer.json, or bytes): shards nuri tokenize wrote with "
             "another are refused ('': not checked)")
        .flag("--tokenizer")
        .meta("FILE");
    return data;
  }();
  return s;
}

const Settings& sample_settings() {
  static const Settings s = [] {
    Settings sample;
    using P = SampleConfig;
    sample.add("prompt", &P::prompt, "text the sample continues");
    sample.add("max_new_tokens", &P::max_new_tokens, "tokens sampled after training (0: none)")
        .at_least(0);
    sample.add("temperature", &P::temperature, "sampling temperature (0: greedy)").at_least(0);
    sample.add("top_k", &P::top_k, "sample among the K likeliest tokens (0: all)").at_least(0);
    sample.add("top_p", &P::top_p, "of the top_k tokens, sample among the fewest likeliest "
               "whose probabilities sum to at least P (1: all)").above(0).at_most(1);
    return sample;
  }();
  return s;
}

const Schema& run_schema() {
  static const Schema schema = build_schema();
  return schema;
}

void RunConfig::validate() const {
  for (const auto& sec : run_schema()) {
    sec.settings.check_bounds(this, sec.name.empty() ? "" : sec.name + ".");
  }
  auto section_check = [](const char* name, auto&& fn) {
    try {
      fn();
    } catch (const ConfigError&) {
      throw;
    } catch (const Error& e) {
      throw ConfigError(std::string(name) + ": " + e.what());
    }
  };
  section_check("model", [&] { model.validate(); });
  section_check("train", [&] { train.validate(); });
  section_check("parallel", [&] { parallel.validate(); });
  section_check("checkpoint.signals", [&] { parse_signals(checkpoint.signals); });
  if (layout != "manual" && layout != "auto") {
    throw ConfigError("layout: '" + layout + "' is neither manual nor auto");
  }
  section_check("profile", [&] {
    if (!profile.empty()) device_profile(profile);
  });
  {
    const auto& formats = data_formats();
    if (std::find(formats.begin(), formats.end(), data.format) == formats.end()) {
      std::string list;
      for (const auto& f : formats) list += (list.empty() ? "" : ", ") + f;
      throw ConfigError("data.format: '" + data.format + "' is not one of " + list);
    }
  }
  if (train.seq_len > model.max_seq_len && checkpoint.init.empty()) {  // (else: the file's model)
    throw ConfigError("train.seq_len (" + std::to_string(train.seq_len) +
                      ") exceeds model.max_seq_len (" + std::to_string(model.max_seq_len) + ")");
  }
  if (model.sliding_window > 0 && train.seq_len > model.sliding_window) {
    throw ConfigError("train.seq_len (" + std::to_string(train.seq_len) +
                      ") is longer than model.sliding_window (" +
                      std::to_string(model.sliding_window) +
                      "): nuri has no sliding-window attention; lower seq_len to the window");
  }
  // The backend must be one this build has (cuda:N is cuda's device N).
  const std::vector<std::string> backends = build_info().backends;
  const std::string base = backend.substr(0, backend.find(':'));
  bool known = std::find(backends.begin(), backends.end(), base) != backends.end();
  if (known && base != backend) {
    const std::string index = backend.substr(base.size() + 1);
    known = base == "cuda" && !index.empty() &&
            std::all_of(index.begin(), index.end(), [](char c) { return c >= '0' && c <= '9'; });
  }
  if (!known) {
    std::string list;
    for (const auto& b : backends) list += (list.empty() ? "" : ", ") + b;
    throw ConfigError("backend: '" + backend + "' is not in this build of nuri; backends: " + list);
  }
}

std::string RunConfig::to_json(int indent) const {
  return settings_to_json(run_schema(), this, indent);
}

RunConfig RunConfig::from_json(const std::string& json, const std::string& origin) {
  RunConfig c;
  settings_from_json(run_schema(), &c, json, origin);
  // A JSON text is most often a whole config that to_json wrote, naming every key: its keys
  // count as given only where they differ from the preset (init_model), as before it was written.
  c.model_keys_given.clear();
  try {
    c.validate();
  } catch (const ConfigError& e) {
    throw ConfigError((origin.empty() ? "" : origin + ": ") + e.what());
  }
  return c;
}

namespace {

// A config file's settings into c. A JSON one is most often a whole config that to_json wrote
// (a run's config.json), naming every key: as from_json, its model keys do not count as given
// (so an n_head set after it keeps a full-attention model full).
void read_config_file(RunConfig* c, const std::string& path) {
  settings_from_file(run_schema(), c, path);
  if (path.size() >= 5 && path.compare(path.size() - 5, 5, ".json") == 0) {
    c->model_keys_given.clear();
  }
}

}  // namespace

RunConfig RunConfig::load(const std::string& path) {
  RunConfig c;
  read_config_file(&c, path);
  try {
    c.validate();
  } catch (const ConfigError& e) {
    throw ConfigError(path + ": " + e.what());
  }
  return c;
}

RunConfig RunConfig::with_overrides(const std::vector<std::string>& overrides) const {
  RunConfig c = *this;
  settings_apply_overrides(run_schema(), &c, overrides);
  c.validate();
  return c;
}

// ---- the command line ----------------------------------------------------------------------

RunArgs parse_run_args(const std::vector<std::string>& args) {
  RunArgs out;
  const Schema& schema = run_schema();
  // Flags become KEY=VALUE overrides; --config is read first; preset overrides go first.
  std::string config_file;
  std::vector<std::string> first, rest;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--help" || a == "-h") {
      out.help = true;
      return out;
    }
    if (a.rfind("--", 0) != 0) {
      if (a.find('=') == std::string::npos || a.rfind("-", 0) == 0) {
        throw ConfigError("unexpected argument '" + a +
                          "': options start with --, overrides "
                          "are KEY=VALUE (see --help)");
      }
      const std::string key = a.substr(0, a.find('='));
      const SettingsSection* sec = nullptr;
      const Setting* s = find_setting(schema, key, &sec);
      const bool is_first =
          (s && s->first) || std::any_of(schema.begin(), schema.end(), [&](const auto& x) {
            return !x.name.empty() && x.name == key;
          });
      (is_first ? first : rest).push_back(a);
      continue;
    }
    std::string flag = a, value;
    bool has_value = false;
    if (const size_t eq = a.find('='); eq != std::string::npos) {
      flag = a.substr(0, eq);
      value = a.substr(eq + 1);
      has_value = true;
    }
    if (flag == "--config") {
      if (!has_value) {
        if (i + 1 >= args.size())
          throw ConfigError("--config needs a value (a .toml or .json file)");
        value = args[++i];
      }
      if (!config_file.empty()) throw ConfigError("--config is given twice");
      config_file = value;
      continue;
    }
    const Setting* found = nullptr;
    std::string path;
    bool negated = false;
    for (const auto& sec : schema) {
      for (const Setting& s : sec.settings.items()) {
        const std::string p = sec.name.empty() ? s.key : sec.name + "." + s.key;
        if (s.flag == flag) {
          found = &s;
          path = p;
        } else if (s.kind == SettingKind::boolean && "--no-" + s.flag.substr(2) == flag) {
          found = &s;
          path = p;
          negated = true;
        }
      }
    }
    if (!found) throw ConfigError("unknown option " + flag + " (see --help)");
    if (found->kind == SettingKind::boolean) {
      if (has_value) {
        throw ConfigError(flag + " takes no value: use " + found->flag + " or --no-" +
                          found->flag.substr(2));
      }
      value = negated ? "false" : "true";
    } else if (!has_value) {
      if (i + 1 >= args.size() || args[i + 1].rfind("--", 0) == 0) {  // the next is an option
        throw ConfigError(flag + " needs a value: " + found->expected());
      }
      value = args[++i];
    }
    (found->first ? first : rest).push_back(path + "=" + value);
  }
  if (!config_file.empty()) read_config_file(&out.config, config_file);
  settings_apply_overrides(schema, &out.config, first);
  settings_apply_overrides(schema, &out.config, rest);
  out.config.validate();
  return out;
}

std::string run_usage(const std::string& program) {
  const RunConfig defaults;
  std::ostringstream os;
  os << "usage: " << program << " [--config FILE] [options] [KEY=VALUE ...]\n\n"
     << "Every option is a setting of the run config (TOML or JSON, read first); KEY=VALUE\n"
     << "overrides name the same settings by path (train.lr=1e-3). Defaults in parentheses.\n";
  for (const auto& sec : run_schema()) {
    os << "\n" << sec.help << "\n";
    for (const Setting& s : sec.settings.items()) {
      const std::string path = sec.name.empty() ? s.key : sec.name + "." + s.key;
      std::string left = "  " + s.flag;
      if (s.kind == SettingKind::boolean)
        left += ", --no-" + s.flag.substr(2);
      else
        left += " " + s.meta;
      if (left.size() < 26)
        left.resize(26, ' ');
      else
        left += "\n" + std::string(26, ' ');
      std::string def = setting_value_str(s.get(&defaults));
      if (s.kind == SettingKind::text) def = "'" + def + "'";
      // Word-wrapped at 100 columns, continuation lines under the text's start.
      std::istringstream words(path + " (" + def + "): " + s.help);
      std::string word, line = left;
      for (bool start = true; words >> word; start = false) {
        const size_t nl = line.rfind('\n');  // a long flag puts the text on a line of its own
        const size_t column = nl == std::string::npos ? line.size() : line.size() - nl - 1;
        if (!start && column + 1 + word.size() > 100) {
          os << line << "\n";
          line = std::string(26, ' ') + word;
        } else {
          line += (start ? "" : " ") + word;
        }
      }
      os << line << "\n";
    }
  }
  return os.str();
}

}  // namespace nuri
