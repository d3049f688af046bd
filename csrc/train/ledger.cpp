// The run ledger (nuri/train/ledger.h).
#include "nuri/train/ledger.h"

#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/json_checked.h"
#include "nuri/core/error.h"

namespace nuri {

namespace {

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

void append(const std::string& path, const std::string& line) {
  std::ofstream out(path, std::ios::app);
  out << line << "\n";
  out.flush();
  NURI_CHECK(out.good(), "cannot append to the run ledger ", path, ": ", std::strerror(errno));
}

}  // namespace

double process_seconds() {
  // /proc/self/stat's 22nd field: the start time in clock ticks after boot; /proc/uptime: now.
  std::ifstream stat("/proc/self/stat"), up("/proc/uptime");
  std::string text;
  double uptime = 0;
  if (!std::getline(stat, text) || !(up >> uptime)) return 0;
  const size_t paren = text.rfind(')');  // the command name may hold spaces
  if (paren == std::string::npos) return 0;
  std::istringstream fields(text.substr(paren + 2));
  std::string f;
  for (int i = 3; i <= 22 && fields >> f; ++i) {
    if (i == 22) return uptime - std::stod(f) / double(sysconf(_SC_CLK_TCK));
  }
  return 0;
}

RunLedger::RunLedger(const std::string& dir, const std::string& fields, double origin_seconds) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  NURI_CHECK(!ec, "cannot make the directory ", dir, " for the run ledger: ", ec.message());
  path_ = (std::filesystem::path(dir) / "ledger.jsonl").string();
  const double start = unix_now() - origin_seconds;
  start_ = start;
  std::ostringstream id;
  id << std::fixed << static_cast<int64_t>(start * 1000) << "-" << getpid();
  id_ = id.str();
  std::ostringstream line;
  line.precision(17);
  line << "{\"event\": \"start\", \"id\": \"" << id_ << "\", \"time\": " << start << ", " << fields
       << "}";
  append(path_, line.str());
}

double RunLedger::wall() const { return unix_now() - start_; }

int64_t RunLedger::steps_reached(const std::string& dir) {
  std::ifstream in(std::filesystem::path(dir) / "ledger.jsonl");
  int64_t most = 0;
  for (std::string line; std::getline(in, line);) {
    try {
      const auto j = json_checked::parse(line);
      const std::string event = j.value("event", "");
      if (event == "end" || event == "start") {
        most = std::max(most, j.value("steps_reached", int64_t(0)));
      }
    } catch (const nlohmann::json::exception&) {  // a line cut short by a crash
    }
  }
  return most;
}

void RunLedger::end(int64_t steps_from, int64_t steps_done, int64_t steps_reached,
                    int64_t redone_steps, int status, const std::string& reason,
                    const LedgerParts& p) {
  if (!active() || ended_) return;
  ended_ = true;
  const double wall = this->wall();
  const double covered = p.startup + p.checkpoint_load + p.evaluation + p.training + p.redone +
                         p.checkpoint_save + p.finish;
  nlohmann::ordered_json j;
  j["event"] = "end";
  j["id"] = id_;
  j["time"] = unix_now();
  j["wall"] = wall;
  j["steps_from"] = steps_from;
  j["steps_done"] = steps_done;
  j["steps_reached"] = steps_reached;
  j["redone_steps"] = redone_steps;
  j["status"] = status;
  j["reason"] = reason;
  j["parts"] = {{"startup", p.startup},       {"checkpoint_load", p.checkpoint_load},
                {"evaluation", p.evaluation}, {"training", p.training},
                {"redone", p.redone},         {"checkpoint_save", p.checkpoint_save},
                {"finish", p.finish},         {"unaccounted", wall - covered}};
  append(path_, j.dump());
}

}  // namespace nuri
