// The settings machinery (nuri/core/settings.h) and the run's schema (nuri/train/run_config.h):
// values checked and converted by kind and bounds, JSON and TOML read alike, aliases, presets
// applied first, overrides, command-line flags, --help listing every setting, and the UTF-8
// cleaning of a byte model's output.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <tuple>

#include "nuri/data/token_file.h"
#include "nuri/train/run_config.h"
#include "test_util.h"

namespace nuri {
namespace {

using test::error_of;

struct Toy {
  int64_t n = 3;
  float x = 0.5f;
  bool on = true;
  std::string name = "a";
  NonFinitePolicy policy = NonFinitePolicy::skip;
};

Settings toy_settings() {
  Settings s;
  s.add("n", &Toy::n, "a count").at_least(1).at_most(10);
  s.add("x", &Toy::x, "a fraction").at_least(0).below(1);
  s.add("on", &Toy::on, "a switch").alias("enabled");
  s.add("name", &Toy::name, "a name");
  s.choice("policy", &Toy::policy,
           {{"skip", NonFinitePolicy::skip}, {"stop", NonFinitePolicy::stop}}, "a choice");
  return s;
}

TEST(Settings, ValuesAreCheckedByKindAndBounds) {
  const Settings s = toy_settings();
  const Setting& n = *s.find("n");
  EXPECT_EQ(std::get<int64_t>(n.check(SettingValue(4.0), "t.n")), 4);  // integral numbers
  EXPECT_EQ(error_of([&] { n.check(SettingValue(4.5), "t.n"); }),
            "t.n: expected an integer in [1, 10], got 4.5");
  EXPECT_EQ(error_of([&] { n.check(SettingValue(int64_t(11)), "t.n"); }),
            "t.n: expected an integer in [1, 10], got 11");
  EXPECT_EQ(error_of([&] { n.check(SettingValue(true), "t.n"); }),
            "t.n: expected an integer in [1, 10], got true");
  const Setting& x = *s.find("x");
  EXPECT_EQ(std::get<double>(x.check(SettingValue(int64_t(0)), "t.x")), 0.0);  // ints are numbers
  EXPECT_EQ(error_of([&] { x.check(SettingValue(1.0), "t.x"); }),
            "t.x: expected a number in [0, 1), got 1");
  EXPECT_EQ(error_of([&] { x.check(SettingValue(std::nan("")), "t.x"); }),
            "t.x: expected a number in [0, 1), got nan");
  EXPECT_EQ(error_of([&] { s.find("policy")->check(SettingValue("retry"), "t.policy"); }),
            "t.policy: expected one of 'skip', 'stop', got 'retry'");
  EXPECT_EQ(s.find("enabled"), s.find("on"));
  Toy t;
  t.n = 0;
  EXPECT_EQ(error_of([&] { s.check_bounds(&t, "toy."); }),
            "toy.n: expected an integer in [1, 10], got 0");
  // A float member reads as its shortest decimal: 0.1f is 0.1, not 0.10000000149011612.
  t.x = 0.1f;
  EXPECT_EQ(std::get<double>(s.find("x")->get(&t)), 0.1);
}

TEST(Settings, JsonAndTomlAreReadAliked) {
  const Schema schema{{"toy", "", toy_settings()}};
  Toy a, b;
  settings_from_json(schema, &a, R"({"toy": {"n": 7, "x": 0.25, "enabled": false, "name": "b",
                                    "policy": "stop"}})");
  settings_from_toml(schema, &b,
                     "[toy]\nn = 7\nx = 0.25\nenabled = false\nname = \"b\"\n"
                     "policy = \"stop\"\n");
  EXPECT_EQ(settings_to_json(schema, &a), settings_to_json(schema, &b));
  EXPECT_EQ(a.n, 7);
  EXPECT_FALSE(a.on);
  EXPECT_EQ(a.policy, NonFinitePolicy::stop);
  for (const auto& [json, toml, message] :
       std::vector<std::tuple<std::string, std::string, std::string>>{
           {R"({"toy": {"m": 1}})", "[toy]\nm = 1\n",
            "toy.m: unknown key; known keys: n, name, on, policy, x"},
           {R"({"toy": {"n": "7"}})", "[toy]\nn = \"7\"\n",
            "toy.n: expected an integer in [1, 10], got '7'"},
           {R"({"toy": {"on": 1}})", "[toy]\non = 1\n", "toy.on: expected true or false, got 1"},
           {R"({"toy": {"name": [1]}})", "[toy]\nname = [1]\n",
            "toy.name: expected a string, got a list"},
           {R"({"toy": 3})", "toy = 3\n", "toy: expected a table, got 3"},
           {R"({"other": {}})", "[other]\n", "other: unknown key; known keys: toy"},
           {R"({"toy": {"on": true, "enabled": false}})", "[toy]\non = true\nenabled = false\n",
            "on (true) and enabled (false) name the same setting and disagree; give one of them"},
       }) {
    Toy t;
    EXPECT_EQ(error_of([&] { settings_from_json(schema, &t, json, "f.json"); }),
              "f.json: " + message);
    EXPECT_EQ(error_of([&] { settings_from_toml(schema, &t, toml, "f.toml"); }),
              "f.toml: " + message);
  }
  Toy t;
  EXPECT_NE(error_of([&] {
              settings_from_toml(schema, &t, "[toy\n", "f.toml");
            }).find("f.toml: not valid TOML"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              settings_from_json(schema, &t, "{", "f.json");
            }).find("f.json: not valid JSON"),
            std::string::npos);
  // A number JSON cannot hold is a config error too (nlohmann throws out_of_range for it).
  EXPECT_NE(error_of([&] {
              settings_from_json(schema, &t, R"({"toy": {"x": 1e999}})", "f.json");
            }).find("f.json: not valid JSON"),
            std::string::npos);
}

// Characters beyond ASCII: read in TOML strings and comments, refused with their line
// elsewhere, before toml++ 3.3 sees them (it reaches __builtin_unreachable on some, e.g.
// U+0456 after a value; fuzz_run_config found it). Overrides keep such text as text.
TEST(Settings, TomlTakesNonAsciiOnlyInStringsAndComments) {
  const Schema schema{{"toy", "", toy_settings()}};
  Toy t;
  settings_from_toml(schema, &t, "# 설정 (a comment)\n[toy]\nname = \"안녕 \\\" і\"  # і\n");
  EXPECT_EQ(t.name, "안녕 \" і");
  settings_from_toml(schema, &t, R"([toy]
name = """é\""""
)");
  EXPECT_EQ(t.name, "é\"");
  settings_from_toml(schema, &t, "[toy]\nname = '''\nline\nі'''\n");
  EXPECT_EQ(t.name, "line\nі");
  EXPECT_EQ(error_of([&] { settings_from_toml(schema, &t, "[toy]\nn = 1 і\n", "f.toml"); }),
            "f.toml: not valid TOML: line 2: a character beyond ASCII outside a string or "
            "comment (TOML allows them only in quoted strings and comments)");
  EXPECT_NE(error_of([&] {
              settings_from_toml(schema, &t, "[toy]\nname = \"\"\"a\\\n  § b\"\"\"\n", "f.toml");
            }).find("f.toml: not valid TOML: line 3: a character beyond ASCII right after a "
                    "line-ending backslash"),
            std::string::npos);
  settings_apply_overrides(schema, &t, {"toy.name=café і"});
  EXPECT_EQ(t.name, "café і");
}

TEST(RunConfig, DefaultsAreTheDemoAndRoundTripThroughJson) {
  const RunConfig c;
  EXPECT_EQ(c.preset, "demo");
  EXPECT_EQ(c.model.d_model, model_preset("demo").d_model);
  c.validate();
  RunConfig d = c.with_overrides({"model=llama-tiny", "train.lr=1e-3", "parallel.zero_stage=2",
                                  "checkpoint.dir=ck", "sample.prompt=1984", "quiet=true",
                                  "train.seq_len=64"});
  EXPECT_EQ(d.model.mlp, MlpKind::swiglu);
  EXPECT_EQ(d.parallel.zero_stage, 2);
  EXPECT_EQ(d.sample.prompt, "1984");  // text stays text
  EXPECT_TRUE(d.quiet);
  const RunConfig e = RunConfig::from_json(d.to_json());
  EXPECT_EQ(e.to_json(), d.to_json());
  EXPECT_EQ(e.train.lr, 1e-3f);
  // A preset in a table applies first, whatever the order; the other keys override it.
  const RunConfig f = RunConfig::from_json(R"({"model": {"n_layer": 3, "preset": "llama-tiny"},
                                              "train": {"seq_len": 64}})");
  EXPECT_EQ(f.model.n_layer, 3);
  EXPECT_EQ(f.model.mlp, MlpKind::swiglu);
}

// What a command line or a file may hold that TOML reads otherwise: an unquoted date is text
// on a command line (it was "date/time 2024-06-01") and an error naming its place in a file;
// numbers TOML does not write (.001, 5., 08) are numbers; text that is not UTF-8 is refused by
// name (it stopped the run when config.json was written).
TEST(RunConfig, DatesBareNumbersAndBytesThatAreNotUtf8) {
  const RunConfig d = RunConfig().with_overrides(
      {"out=2024-06-01", "sample.prompt=12:30:00", "train.lr=.001", "train.warmup_steps=08",
       "train.min_lr_ratio=0."});
  EXPECT_EQ(d.out, "2024-06-01");
  EXPECT_EQ(d.sample.prompt, "12:30:00");
  EXPECT_EQ(d.train.lr, 0.001f);
  EXPECT_EQ(d.train.warmup_steps, 8);
  EXPECT_EQ(d.train.min_lr_ratio, 0.0f);
  EXPECT_EQ(error_of([] { RunConfig().with_overrides({"train.steps=2024-06-01"}); }),
            "train.steps: expected an integer >= 1, got '2024-06-01'");
  const std::string path =
      (std::filesystem::temp_directory_path() / "nuri_date_config.toml").string();
  std::ofstream(path) << "out = \"runs/a\"\n[checkpoint]\ndir = 2024-06-01\n";
  EXPECT_EQ(error_of([&] { RunConfig::load(path); }),
            path + ": line 3, column 7: 2024-06-01 is a TOML date or time, which no setting "
                   "takes; quote it for text (\"2024-06-01\")");
  std::filesystem::remove(path);
  EXPECT_EQ(error_of([] { RunConfig().with_overrides({"sample.prompt=caf\xe9"}); }),
            "sample.prompt: not UTF-8 text (byte 0xE9 at offset 3); settings are UTF-8: convert "
            "the path or text (iconv -f latin1 -t utf-8, say)");
  EXPECT_NE(error_of([] { RunConfig().with_overrides({"out=a\xed\xa0\x80"}); })
                .find("byte 0xED at offset 1"),  // a surrogate
            std::string::npos);
  EXPECT_EQ(RunConfig().with_overrides({"sample.prompt=café і"}).sample.prompt, "café і");
}

TEST(RunConfig, CrossSectionChecksNameTheKeys) {
  EXPECT_EQ(error_of([] {
              RunConfig::from_json(R"({"model": "gpt2-tiny",
                                                   "train": {"seq_len": 200}})");
            }),
            "train.seq_len (200) exceeds model.max_seq_len (128)");
  EXPECT_NE(error_of([] {
              RunConfig::from_json(R"({"model": {"n_head": 5}})");
            }).find("model: n_head (5) must divide d_model (256)"),
            std::string::npos);
  EXPECT_NE(error_of([] {
              RunConfig::from_json(R"({"checkpoint": {"signals": "TERM,KILL"}})");
            }).find("checkpoint.signals: signal 'KILL' is not one a run can catch"),
            std::string::npos);
  EXPECT_NE(error_of([] {
              RunConfig::from_json(R"({"backend": "tpu"})");
            }).find("backend: 'tpu' is not in this build of nuri; backends: cpu"),
            std::string::npos);
  EXPECT_EQ(error_of([] { RunConfig::from_json(R"({"model": "gpt2-huge"})"); }).substr(0, 45),
            "model.preset: unknown preset 'gpt2-huge'; pre");
}

// Sizes the run multiplies or narrows are bounded where read: tp · pp stays an int (65536²
// wrapped to 0, a division by zero), keep an int (4294967297 became 1, deleting every older
// checkpoint), bucket_mb's bytes an int64.
TEST(RunConfig, SizesThatWouldOverflowAreRefused) {
  EXPECT_EQ(error_of([] { RunConfig::from_json(R"({"parallel": {"tp": 65536, "pp": 65536}})"); }),
            "parallel.tp: expected an integer in [1, 32768], got 65536");
  EXPECT_EQ(error_of([] { RunConfig::from_json(R"({"checkpoint": {"keep": 4294967297}})"); }),
            "checkpoint.keep: expected an integer in [1, 1073741824], got 4294967297");
  EXPECT_NE(error_of([] { RunConfig::from_json(R"({"parallel": {"bucket_mb": 1e13}})"); })
                .find("parallel.bucket_mb: expected a number"),
            std::string::npos);
  EXPECT_EQ(RunConfig::from_json(R"({"parallel": {"bucket_mb": 1048576}})").parallel.bucket_bytes,
            int64_t(1) << 40);
}

TEST(RunArgs, FlagsAreTheKeysWithDashes) {
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / "nuri_run_args";
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "run.toml") << "model = \"gpt2-tiny\"\n[train]\nsteps = 9\nlr = 1e-3\n";
  const RunArgs a =
      parse_run_args({"--n-layer", "3", "--config", (dir / "run.toml").string(), "--micro-batch=2",
                      "--no-overlap", "--async-save", "train.lr=5e-3", "--seq-len", "64",
                      "--zero-stage", "1", "--ckpt-dir", "ck", "--data", "x.txt"});
  EXPECT_FALSE(a.help);
  EXPECT_EQ(a.config.preset, "gpt2-tiny");  // the file first
  EXPECT_EQ(a.config.model.n_layer, 3);     // then the flags over it
  EXPECT_EQ(a.config.train.steps, 9);
  EXPECT_EQ(a.config.train.micro_batch, 2);
  EXPECT_EQ(a.config.train.lr, 5e-3f);
  EXPECT_FALSE(a.config.parallel.overlap);
  EXPECT_TRUE(a.config.checkpoint.async_save);
  EXPECT_EQ(a.config.checkpoint.dir, "ck");
  EXPECT_EQ(a.config.data.train, "x.txt");
  // --model resets the model first, so a later-given field still overrides it.
  EXPECT_EQ(parse_run_args({"--n-layer", "3", "--model", "llama-tiny", "--seq-len", "64"})
                .config.model.n_layer,
            3);
  EXPECT_TRUE(parse_run_args({"--lr", "1", "--help"}).help);
  EXPECT_EQ(error_of([] { parse_run_args({"--fast"}); }), "unknown option --fast (see --help)");
  EXPECT_EQ(error_of([] { parse_run_args({"--steps"}); }),
            "--steps needs a value: an integer >= 1");
  EXPECT_EQ(error_of([] {
              parse_run_args({"--steps", "--lr", "1"});
            }),
            "--steps needs a value: an integer >= 1");
  EXPECT_EQ(error_of([] { parse_run_args({"--quiet=yes"}); }),
            "--quiet takes no value: use --quiet or --no-quiet");
  EXPECT_EQ(error_of([] { parse_run_args({"corpus.txt"}); }),
            "unexpected argument 'corpus.txt': options start with --, overrides are KEY=VALUE "
            "(see --help)");
  EXPECT_EQ(error_of([] {
              parse_run_args({"--lr", "fast"});
            }),
            "train.lr: expected a number > 0, got 'fast'");
  std::filesystem::remove_all(dir);
}

TEST(RunArgs, HelpListsEverySettingWithItsFlagAndKey) {
  const std::string usage = run_usage("nuri-train");
  for (const auto& sec : run_schema()) {
    for (const Setting& s : sec.settings.items()) {
      const std::string path = sec.name.empty() ? s.key : sec.name + "." + s.key;
      EXPECT_NE(usage.find("  " + s.flag), std::string::npos) << s.flag;
      EXPECT_NE(usage.find(path + " ("), std::string::npos) << path;
    }
  }
  std::istringstream lines(usage);
  for (std::string line; std::getline(lines, line);) EXPECT_LE(line.size(), 100u) << line;
}

TEST(ValidUtf8, IllFormedSequencesBecomeReplacementCharactersAsInPython) {
  // Expected strings: Python's bytes.decode("utf-8", "replace") of the same bytes.
  EXPECT_EQ(valid_utf8("plain \xc3\xa9t\xc3\xa9"), "plain \xc3\xa9t\xc3\xa9");
  EXPECT_EQ(valid_utf8("a\xc3"), "a\xef\xbf\xbd");                // cut short
  EXPECT_EQ(valid_utf8("\xe2\x82z"), "\xef\xbf\xbdz");            // a 3-byte prefix: one
  EXPECT_EQ(valid_utf8("\xc0\xaf"), "\xef\xbf\xbd\xef\xbf\xbd");  // overlong: each byte
  EXPECT_EQ(valid_utf8("\xed\xa0\x80"), "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");  // surrogate
  EXPECT_EQ(valid_utf8("\xf0\x9f\x98\x80!"), "\xf0\x9f\x98\x80!");                // 4 bytes
  EXPECT_EQ(valid_utf8("\xf4\x90\x80\x80"),
            "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");  // beyond U+10FFFF
}

}  // namespace
}  // namespace nuri
