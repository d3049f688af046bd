// Elastic resume (issues #10, #21), run as one job of 4 ranks (mpirun, label mpi; torchrun-style,
// label tcp). The job plays five allocations in turn, each a group of its ranks (the others wait)
// with its own layout, each resuming the previous one's checkpoint:
//   A  2 ranks, ZeRO 2, recompute none,      micro-batch 2   steps 1-3, save
//   B  1 rank,  ZeRO 0, recompute full,      micro-batch 4   load (2 → 1, ZeRO 2 → 0), 4-6, save
//   C  4 ranks, ZeRO 3, recompute selective, micro-batch 1   load (1 → 4, → ZeRO 3), 7-9, save
//   D  2 ranks, ZeRO 3, recompute full,      micro-batch 2   load (4 → 2), 10-12, save
//   E  4 ranks, ZeRO 1, recompute none,      micro-batch 1   load (2 → 4, ZeRO 3 → 1), 13-15
// B, C and D save asynchronously. The global batch is 4 sequences throughout, so the global sample order goes on where it
// stopped; every step's loss must follow one process that never stopped within the bound of the
// data-parallel tests (tests/dist/test_dp.cpp: 1e-5 of the loss; the reductions associate
// differently on each layout), and the last weights too. The same job also commits one
// checkpoint where a rank's part of the manifest is over 16 MiB.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "nuri/ckpt/checkpoint.h"
#include "nuri/dist/communicator.h"
#include "nuri/dist/launch.h"
#include "nuri/train/trainer.h"

namespace nuri {
namespace {

std::shared_ptr<TokenFile> text_data() {
  std::string text;
  for (int i = 0; i < 300; ++i) text += "a stitch in time saves nine; " + std::to_string(i % 13);
  return TokenFile::from_tokens(ByteTokenizer().encode(text), "proverb", 257);
}

TrainConfig config(int64_t micro_batch) {
  TrainConfig c;
  c.steps = 15;
  c.micro_batch = micro_batch;
  c.seq_len = 32;
  c.lr = 3e-3f;
  c.warmup_steps = 2;
  c.eval_every = 0;
  return c;
}

struct Phase {
  std::vector<int> ranks;
  int zero;
  Recompute recompute;
  int64_t micro_batch;
};

/// The job's 4 ranks, met once for every test.
std::shared_ptr<Communicator> job() {
  static const std::shared_ptr<Communicator> world = [] {
    CommOptions opt;
    opt.timeout_s = 300;
    return make_communicator(detect_launch(), opt);
  }();
  return world;
}

/// One directory for the job: the launcher's process (parent of every rank) names it.
std::string job_dir(const std::string& what) {
  return std::filesystem::temp_directory_path().string() + "/nuri_" + what + "_" +
         std::to_string(::getppid());
}

TEST(ElasticResume, FourAllocationsWithFourLayoutsFollowOneProcess) {
  std::shared_ptr<Communicator> world = job();
  ASSERT_EQ(world->size(), 4) << "run this test as a job of 4 ranks";
  const ModelConfig mc = model_preset("gpt2-tiny");
  // The one process that never stops (every rank computes it).
  Transformer ref_model(mc, make_backend("cpu"), 7);
  Trainer ref(ref_model, config(4), text_data(), nullptr);
  std::vector<float> want;
  for (int i = 0; i < 15; ++i) want.push_back(ref.step().loss);
  const std::string root = job_dir("elastic");
  if (world->rank() == 0) std::filesystem::remove_all(root);
  world->barrier();

  const std::vector<Phase> phases = {{{0, 1}, 2, Recompute::none, 2},
                                     {{0}, 0, Recompute::full, 4},
                                     {{0, 1, 2, 3}, 3, Recompute::selective, 1},
                                     {{0, 1}, 3, Recompute::full, 2},
                                     {{0, 1, 2, 3}, 1, Recompute::none, 1}};
  double worst = 0;
  std::vector<float> last_params;
  for (size_t k = 0; k < phases.size(); ++k) {
    const Phase& ph = phases[k];
    const bool member =
        std::find(ph.ranks.begin(), ph.ranks.end(), world->rank()) != ph.ranks.end();
    if (member) {
      std::shared_ptr<Communicator> group =
          ph.ranks.size() == 4 ? world : std::shared_ptr<Communicator>(world->split(ph.ranks));
      // The first allocation starts from the reference's initial weights; the later ones from
      // other ones, since everything must come from the checkpoint.
      Transformer m(mc, make_backend("cpu"), k == 0 ? 7 : 1000 + int(k));
      ParallelConfig par;
      par.zero_stage = ph.zero;
      par.bucket_bytes = 64 << 10;
      TrainConfig tc = config(ph.micro_batch);
      tc.recompute = ph.recompute;
      Trainer t(m, tc, text_data(), nullptr, ph.ranks.size() > 1 ? group : nullptr, par);
      if (k > 0) {
        t.load_checkpoint(root);
        EXPECT_EQ(t.steps_done(), int64_t(3 * k)) << "phase " << k;
      }
      for (int i = 0; i < 3; ++i) {
        const StepStats s = t.step();
        const double rel = std::abs(double(s.loss) - want[size_t(s.step - 1)]) /
                           want[size_t(s.step - 1)];
        worst = std::max(worst, rel);
        EXPECT_LE(rel, 1e-5) << "phase " << k << " (" << ph.ranks.size() << " ranks, ZeRO "
                             << ph.zero << "), step " << s.step << ": " << s.loss
                             << " vs one process's " << want[size_t(s.step - 1)];
      }
      if (k + 1 < phases.size()) {
        if (k >= 1) {  // asynchronously: the files on a thread, the commit collective
          t.save_checkpoint_async(root, 2);
          t.finish_checkpoint();
        } else {
          t.save_checkpoint(root, 2);
        }
      } else {
        const Tensor p = t.master_weights();
        last_params.assign(p.data<float>(), p.data<float>() + p.numel());
      }
    }
    world->barrier();  // the next allocation starts when this one has ended
  }
  if (world->rank() == 0) {
    const Tensor& p = ref_model.param_buffer();
    double max_diff = 0, max_abs = 0;
    for (int64_t i = 0; i < p.numel(); ++i) {
      max_diff = std::max(max_diff, double(std::abs(last_params[size_t(i)] - p.data<float>()[i])));
      max_abs = std::max(max_abs, double(std::abs(p.data<float>()[i])));
    }
    // Weights after 15 AdamW steps: each step moves a weight by at most ~lr, and the layouts'
    // rounding differences change updates by far less than that.
    EXPECT_LE(max_diff, 1e-4 * max_abs) << "weights after the last phase";
    std::printf("[ elastic ] 2 -> 1 -> 4 -> 2 -> 4 ranks, ZeRO 2 -> 0 -> 3 -> 3 -> 1, recompute "
                "none -> full -> selective -> full -> none: worst |dloss|/loss %.3g over 15 "
                "steps; weights within %.3g of one process's\n", worst, max_diff);
    std::filesystem::remove_all(root);
  }
}

// One rank whose part of the manifest is over 16 MiB (here a tensor's name) commits with the
// others: the lengths the ranks exchange were one f32 each, exact only below 2^24, and that rank
// refused alone while the others waited for it until the timeout.
TEST(CheckpointRecords, OneRankOver16MiBCommitsWithTheOthers) {
  std::shared_ptr<Communicator> world = job();
  ASSERT_EQ(world->size(), 4) << "run this test as a job of 4 ranks";
  const std::string root = job_dir("records");
  if (world->rank() == 0) std::filesystem::remove_all(root);
  world->barrier();
  const std::string long_name(size_t(17) << 20, 'n');
  auto name_of = [&](int r) { return r == 2 ? long_name : "rank" + std::to_string(r); };
  {
    CheckpointWriter w(root, 1, world.get());
    Tensor t = Tensor::empty({2}, DType::f32);
    t.data<float>()[0] = float(world->rank());
    t.data<float>()[1] = -float(world->rank());
    w.add_range(name_of(world->rank()), 2, 0, t);
    w.set_meta("{}");
    EXPECT_EQ(w.commit(1), root + "/step-00000001");
  }
  world->barrier();
  CheckpointReader r(root);
  EXPECT_EQ(r.range_names().size(), 4u);
  for (int rank = 0; rank < 4; ++rank) {
    Tensor t = Tensor::empty({2}, DType::f32);
    r.read_range(name_of(rank), 0, 2, t);
    EXPECT_EQ(t.data<float>()[0], float(rank));
    EXPECT_EQ(t.data<float>()[1], -float(rank));
  }
  world->barrier();
  if (world->rank() == 0) std::filesystem::remove_all(root);
}

}  // namespace
}  // namespace nuri
