// nuri-train: the command-line front end of a training run (nuri/train/run.h). It parses the
// flags, KEY=VALUE overrides and --config file of the run's schema (nuri/train/run_config.h;
// `nuri-train --help` lists them) and runs; `python -m nuri train` is the same run from Python,
// with the same flags, output, files and exit statuses.
//   nuri-train [--config FILE] [options] [KEY=VALUE ...]   train (the demo with no options)
//   nuri-train tokenize IN.txt OUT.bin                      text file -> token file (bytes)
// Under mpirun, srun or a torchrun-style start the ranks train data-parallel.
// Exit status: 0 done, 1 error, 2 bad config or usage, 3 expect_val_below not met, 75 stopped
// by a preemption signal or the time limit after a checkpoint ("requeue me"), 130 stopped by
// Ctrl-C (at a step boundary; a second Ctrl-C ends it at once).
#include <atomic>
#include <csignal>
#include <cstdio>
#include <exception>
#include <functional>
#include <string>
#include <vector>

#include "nuri/data/token_file.h"
#include "nuri/train/run.h"

namespace {

std::atomic<int> g_interrupted{0};  // set on whichever thread the signal lands

void on_interrupt(int) { g_interrupted.store(1); }

// Ctrl-C stops the run at the next step boundary (every rank together, checkpointed with
// checkpoint.dir, status 130), as `python -m nuri train` does; a second one ends it at once.
// The hook is there on every rank (it decides which collectives a step makes); the handler only
// where SIGINT was not ignored at the start (nohup, a background job of a script), where the
// hook then stays false.
std::function<bool()> catch_interrupt() {
  struct sigaction old {};
  if (sigaction(SIGINT, nullptr, &old) == 0 && old.sa_handler == SIG_DFL) {
    struct sigaction sa {};
    sa.sa_handler = on_interrupt;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESETHAND | SA_RESTART;
    sigaction(SIGINT, &sa, nullptr);
  }
  return [] { return g_interrupted.load() != 0; };
}

}  // namespace

int main(int argc, char** argv) {
  using namespace nuri;
  const std::vector<std::string> args(argv + 1, argv + argc);
  try {
    if (!args.empty() && args[0] == "tokenize") {
      if (args.size() != 3) throw ConfigError("tokenize takes IN.txt OUT.bin");
      const int64_t n = text_file_to_tokens(args[1], args[2]);
      std::printf("wrote %lld tokens to %s\n", (long long)n, args[2].c_str());
      return 0;
    }
    const RunArgs parsed = parse_run_args(args);
    if (parsed.help) {
      std::printf(
          "%s\nnuri-train tokenize IN.txt OUT.bin writes a text file's byte tokens as a "
          "token file.\n",
          run_usage("nuri-train").c_str());
      return 0;
    }
    RunHooks hooks;
    hooks.interrupted = catch_interrupt();
    return run_training(parsed.config, hooks).status;
  } catch (const ConfigError& e) {
    std::fprintf(stderr, "nuri-train: %s\n", e.what());
    return kRunUsage;
  } catch (const Error& e) {
    std::fprintf(stderr, "nuri-train: %s\n", e.what());
    return kRunFailed;
  } catch (const std::exception& e) {  // not nuri's own: a bug to report, but not an abort
    std::fprintf(stderr, "nuri-train: unexpected error (please report it): %s\n", e.what());
    return kRunFailed;
  }
}
