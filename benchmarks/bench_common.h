// Shared helpers of the C++ benchmarks (see ../../shared/BENCHMARKS.md for the method):
// wall-clock timing, median/min/max of samples, a tiny JSON object builder, one-line-per-object
// output to stdout and to --json FILE, and the thread count every contender must use.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <omp.h>

namespace bench {

inline double now_s() {
  using clock = std::chrono::steady_clock;
  return std::chrono::duration<double>(clock::now().time_since_epoch()).count();
}

struct Stats {
  double median_s = 0, min_s = 0, max_s = 0;
};

inline Stats summarize(std::vector<double> v) {
  Stats s;
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  s.median_s = n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
  s.min_s = v.front();
  s.max_s = v.back();
  return s;
}

/// Calls per timed sample so that one sample lasts at least `target_s` (timer noise on small ops).
inline int iters_for(double t_one, double target_s) {
  if (!(t_one > 0)) return 1;
  double it = std::ceil(target_s / t_one);
  return int(std::clamp(it, 1.0, 100000.0));
}

/// Seconds per call of f(), averaged over `iters` back-to-back calls.
template <typename F>
double time_per_call(F&& f, int iters) {
  double t0 = now_s();
  for (int i = 0; i < iters; ++i) f();
  return (now_s() - t0) / iters;
}

/// Builds one JSON object, keys in insertion order.
class Json {
 public:
  Json& kv(const std::string& k, double v) {
    char buf[64];
    if (std::isfinite(v))
      std::snprintf(buf, sizeof buf, "%.6g", v);
    else
      std::snprintf(buf, sizeof buf, "null");
    return raw(k, buf);
  }
  Json& kv(const std::string& k, int v) { return raw(k, std::to_string(v)); }
  Json& kv(const std::string& k, int64_t v) { return raw(k, std::to_string(v)); }
  Json& kv(const std::string& k, bool v) { return raw(k, v ? "true" : "false"); }
  Json& kv(const std::string& k, const char* v) { return raw(k, quote(v)); }
  Json& kv(const std::string& k, const std::string& v) { return raw(k, quote(v)); }
  Json& kv(const std::string& k, const Json& v) { return raw(k, v.str()); }
  Json& stats(const Stats& s) {
    kv("median_s", s.median_s);
    kv("min_s", s.min_s);
    return kv("max_s", s.max_s);
  }
  std::string str() const { return "{" + body_ + "}"; }

  static std::string quote(const std::string& s) {
    std::string o = "\"";
    for (char c : s) {
      if (c == '"' || c == '\\') {
        o += '\\';
        o += c;
      } else if (static_cast<unsigned char>(c) < 0x20) {
        char buf[8];
        std::snprintf(buf, sizeof buf, "\\u%04x", c);
        o += buf;
      } else {
        o += c;
      }
    }
    return o + "\"";
  }

 private:
  Json& raw(const std::string& k, const std::string& v) {
    if (!body_.empty()) body_ += ", ";
    body_ += quote(k) + ": " + v;
    return *this;
  }
  std::string body_;
};

/// Prints each object on its own line to stdout, and to the --json file when one is given.
class Output {
 public:
  explicit Output(const std::string& path) {
    if (!path.empty()) {
      file_ = std::fopen(path.c_str(), "w");
      if (!file_) {
        std::fprintf(stderr, "cannot open %s for writing\n", path.c_str());
        std::exit(2);
      }
    }
  }
  ~Output() {
    if (file_) std::fclose(file_);
  }
  Output(const Output&) = delete;
  Output& operator=(const Output&) = delete;
  void emit(const Json& j) {
    std::string s = j.str();
    std::printf("%s\n", s.c_str());
    std::fflush(stdout);
    if (file_) {
      std::fprintf(file_, "%s\n", s.c_str());
      std::fflush(file_);
    }
  }

 private:
  FILE* file_ = nullptr;
};

/// OMP_NUM_THREADS when set (first entry of a list), else every core; applied to OpenMP.
inline int bench_threads() {
  int n = 0;
  if (const char* e = std::getenv("OMP_NUM_THREADS")) n = std::atoi(e);
  if (n <= 0) n = omp_get_num_procs();
  omp_set_num_threads(n);
  return n;
}

inline double geomean(const std::vector<double>& v) {
  if (v.empty()) return 0;
  double s = 0;
  for (double x : v) s += std::log(x);
  return std::exp(s / double(v.size()));
}

}  // namespace bench
