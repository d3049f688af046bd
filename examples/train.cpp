// nuri-train: the command-line front end of a training run (nuri/train/run.h). It parses the
// flags, KEY=VALUE overrides and --config file of the run's schema (nuri/train/run_config.h;
// `nuri-train --help` lists them) and runs; `python -m nuri train` is the same run from Python,
// with the same flags, output, files and exit statuses.
//   nuri-train [--config FILE] [options] [KEY=VALUE ...]   train (the demo with no options)
//   nuri-train tokenize IN.txt OUT.bin                      text file -> token file (bytes)
// Under mpirun, srun or a torchrun-style start the ranks train data-parallel.
// Exit status: 0 done, 1 error, 2 bad config or usage, 3 expect_val_below not met, 75 stopped
// by a preemption signal or the time limit after a checkpoint ("requeue me").
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "nuri/data/token_file.h"
#include "nuri/train/run.h"

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
    return run_training(parsed.config).status;
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
