// Preemption signals and the wall-clock limit, agreed on by all ranks at a step boundary.
#include "nuri/train/preemption.h"

#include <atomic>
#include <csignal>
#include <cstdlib>
#include <memory>
#include <string>

#include "nuri/core/error.h"
#include "nuri/dist/communicator.h"

namespace nuri {

namespace {
using SigAction = struct sigaction;
std::atomic<int> g_signal{0};
extern "C" void on_signal(int sig) { g_signal.store(sig); }
}  // namespace

PreemptionWatch::PreemptionWatch(std::vector<int> signals, double time_limit_s,
                                 double elapsed_s)
    : signals_(std::move(signals)), limit_s_(time_limit_s),
      start_(std::chrono::steady_clock::now() -
             std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                 std::chrono::duration<double>(elapsed_s))) {
  NURI_CHECK(time_limit_s >= 0, "time limit (", time_limit_s, " s) must be >= 0");
  NURI_CHECK(elapsed_s >= 0, "time spent before the watch (", elapsed_s, " s) must be >= 0");
  g_signal.store(0);
  previous_.resize(signals_.size());
  for (size_t i = 0; i < signals_.size(); ++i) {
    struct sigaction sa {};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    auto* old = new SigAction{};
    previous_[i] = std::shared_ptr<void>(old, [](void* p) { delete static_cast<SigAction*>(p); });
    NURI_CHECK(sigaction(signals_[i], &sa, old) == 0, "cannot install a handler for signal ",
               signals_[i]);
  }
}

PreemptionWatch::~PreemptionWatch() {
  // The handlers that were there before (a host program's, Python's), not the defaults.
  for (size_t i = 0; i < signals_.size(); ++i) {
    sigaction(signals_[i], static_cast<SigAction*>(previous_[i].get()), nullptr);
  }
}

int PreemptionWatch::signal() const { return g_signal.load(); }

bool PreemptionWatch::should_stop(double step_seconds, Communicator* comm, bool interrupt,
                                  double then_s) {
  longest_step_ = std::max(longest_step_, step_seconds);
  if (limit_s_ > 0) {
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    time_up_ = elapsed + 2 * longest_step_ + then_s >= limit_s_;
  }
  const bool signalled = g_signal.load() != 0;
  interrupted_ = interrupt;
  any_signal_ = signalled;
  any_time_up_ = time_up_;
  if (!comm || comm->size() == 1) return signalled || time_up_ || interrupt;
  // [signalled, interrupted, time up] summed over the ranks: every rank stops, and knows why.
  Communicator& host = *comm->host_communicator();
  Tensor flags = Tensor::empty({3}, DType::f32);
  flags.data<float>()[0] = signalled ? 1.f : 0.f;
  flags.data<float>()[1] = interrupt ? 1.f : 0.f;
  flags.data<float>()[2] = time_up_ ? 1.f : 0.f;
  host.all_reduce(flags, ReduceOp::sum);
  any_signal_ = flags.data<float>()[0] > 0;
  interrupted_ = flags.data<float>()[1] > 0;
  any_time_up_ = flags.data<float>()[2] > 0;
  return any_signal_ || interrupted_ || any_time_up_;
}

bool PreemptionWatch::signalled_on_any_rank(Communicator* comm) {
  const bool signalled = g_signal.load() != 0;
  if (!comm || comm->size() == 1) return any_signal_ = signalled;
  Tensor flag = Tensor::empty({1}, DType::f32);
  flag.data<float>()[0] = signalled ? 1.f : 0.f;
  comm->host_communicator()->all_reduce(flag, ReduceOp::sum);
  any_signal_ = flag.data<float>()[0] > 0;
  return any_signal_;
}

std::vector<int> parse_signals(const std::string& list) {
  std::vector<int> out;
  size_t at = 0;
  while (at <= list.size()) {
    const size_t comma = list.find(',', at);
    std::string name = list.substr(at, comma == std::string::npos ? std::string::npos : comma - at);
    at = comma == std::string::npos ? list.size() + 1 : comma + 1;
    if (name.empty()) continue;
    if (name.rfind("SIG", 0) == 0) name = name.substr(3);
    int sig = 0;
    if (name == "TERM") sig = SIGTERM;
    else if (name == "USR1") sig = SIGUSR1;
    else if (name == "USR2") sig = SIGUSR2;
    else if (name == "INT") sig = SIGINT;
    else if (name == "HUP") sig = SIGHUP;
    else if (!name.empty() && name.find_first_not_of("0123456789") == std::string::npos) {
      sig = std::atoi(name.c_str());
    }
    NURI_CHECK(sig > 0 && sig < 65 && sig != SIGKILL && sig != SIGSTOP, "signal '", name,
               "' is not one a run can catch; use TERM, USR1, USR2, INT, HUP or a number");
    out.push_back(sig);
  }
  NURI_CHECK(!out.empty(), "no signals in '", list, "'");
  return out;
}

}  // namespace nuri
