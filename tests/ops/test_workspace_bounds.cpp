// The planner's bounds of the CUDA backend's workspace (nuri/train/plan.h) against what the
// kernels' host code asks for: the norms' backward (plan_norm_backward, with the emulator's
// spread of rows and a GPU's) and the optimizer step's tables (AdamW, the global norm), over
// model widths on both sides of the norm's warp-a-row and block-a-row kernels and row counts
// from one to far beyond the blocks' caps. Emulated tree only (the kernels' host code).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "norm.h"
#include "nuri/model/config.h"
#include "nuri/model/transformer.h"
#include "nuri/parallel/pipeline.h"
#include "nuri/train/plan.h"
#include "optimizer.h"

namespace nuri::test {
namespace {

ModelConfig widths_model(int64_t d_model, bool layernorm_bias) {
  ModelConfig c = model_preset(layernorm_bias ? "gpt2-tiny" : "llama-tiny");
  c.d_model = d_model;
  c.n_head = d_model / 64;
  c.n_kv_head = c.n_head;
  return c;
}

TEST(WorkspaceBounds, NormBackwardAtEveryWidthAndRowCount) {
  for (const bool bias : {true, false}) {
    // 1024: the widest a warp takes a row of; 12288 with a bias: accumulators beyond a block's
    // shared memory (in the workspace, twice the bytes).
    for (const int64_t c : {64, 768, 1024, 1088, 4096, 12288}) {
      const ModelConfig cfg = widths_model(c, bias);
      for (const int64_t rows : {1, 3, 64, 100, 1000, 4096, 16384, 65536, 1 << 20}) {
        const int64_t bound = norm_backward_workspace_bound(cfg, rows);
        for (const int64_t spread : {int64_t(0), int64_t(1), kernels::kNormGpuTargetBlocks}) {
          const kernels::NormBackwardPlan p = kernels::plan_norm_backward(rows, c, bias, spread);
          EXPECT_LE(int64_t(p.workspace_bytes), bound)
              << "C " << c << ", " << rows << " rows, bias " << bias << ", spread " << spread;
        }
        // Not a bound by a wide margin: with a warp a row and one warp a block (what a GPU's
        // spread gives small M), the kernel asks for exactly the bound.
        if (c <= 1024 && rows <= 4 * kernels::kNormGpuTargetBlocks) {
          EXPECT_EQ(int64_t(kernels::plan_norm_backward(rows, c, bias,
                                                        kernels::kNormGpuTargetBlocks)
                                .workspace_bytes),
                    bound)
              << "C " << c << ", " << rows << " rows";
        }
      }
    }
  }
}

TEST(WorkspaceBounds, OptimizerStepOverEachPlacesParameters) {
  for (const char* preset : {"gpt2-tiny", "llama-tiny", "gpt2-124M", "llama-1B"}) {
    const ModelConfig cfg = model_preset(preset);
    for (const int tp : {1, 2}) {
      for (const int pp : {1, 2}) {
        const std::vector<int64_t> first = pipeline_stages(cfg, pp, 128);
        for (int s = 0; s < pp; ++s) {
          const TensorParallelRank place{0, tp};
          const PipelineStage stage =
              pp == 1 ? PipelineStage{} : PipelineStage{first[size_t(s)], first[size_t(s) + 1]};
          const std::vector<ParamSpec> layout = param_layout(cfg, place, stage);
          std::vector<kernels::NormTensorDesc> descs;
          for (const ParamSpec& p : layout) descs.push_back({nullptr, p.numel(), 0});
          const int64_t bound = optimizer_workspace_bound(cfg, place, stage);
          SCOPED_TRACE(std::string(preset) + " tp " + std::to_string(tp) + " stage " +
                       std::to_string(s) + " of " + std::to_string(pp));
          EXPECT_LE(int64_t(kernels::adamw_workspace_bytes(int64_t(descs.size()))), bound);
          EXPECT_LE(int64_t(kernels::global_norm_workspace_bytes(descs.data(),
                                                                 int64_t(descs.size()))),
                    bound);
          // ZeRO 2 and 3 pass the rank's shard as one tensor.
          int64_t all = 0;
          for (const ParamSpec& p : layout) all += p.numel();
          const kernels::NormTensorDesc shard{nullptr, all, 0};
          EXPECT_LE(int64_t(kernels::global_norm_workspace_bytes(&shard, 1)), bound);
          // And the bound is the larger table to within its alignment slack.
          EXPECT_LE(bound, std::max(int64_t(kernels::adamw_workspace_bytes(int64_t(descs.size()))),
                                    int64_t(kernels::global_norm_workspace_bytes(
                                        descs.data(), int64_t(descs.size())))) +
                               64 + 8 * (int64_t(descs.size()) + 1));
        }
      }
    }
  }
}

}  // namespace
}  // namespace nuri::test
