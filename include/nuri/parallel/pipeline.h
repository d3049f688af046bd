// Pipeline parallelism's stages (DESIGN.md, "Models larger than one GPU"; issue #23): each
// stage owns a contiguous range of the model's blocks, stage 0 also the embedding and the last
// stage the head. This file holds the split; the schedules (1F1B, interleaved) are to come.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "nuri/model/config.h"

namespace nuri {

/// The training FLOPs (forward and backward, 3× the forward's products) of one token through
/// each unit, the cost the stage split balances: a block's products (2 per weight per token)
/// and its causal attention (4·T·d per token, halved for the mask) and, for the head, the LM
/// head's product over the padded vocabulary. The embedding is a lookup: 0.
struct UnitCosts {
  double embedding = 0;
  std::vector<double> blocks;  ///< per block
  double head = 0;
};
UnitCosts unit_costs(const ModelConfig& cfg, int64_t seq_len);

/// The blocks each of `pp` stages owns: stage s owns [first[s], first[s + 1]) with first[0] =
/// 0 and first[pp] = n_layer. `split` (optional) gives the blocks per stage explicitly, e.g.
/// {5, 5, 5, 9}; otherwise the split minimizes the largest stage's cost (unit_costs: the head
/// weighs on the last stage, so it gets fewer blocks), ties going to the earlier stages. Every
/// stage owns at least one block. Throws nuri::Error naming the numbers when pp is not in
/// [1, n_layer] or `split` does not give pp positive counts summing to n_layer.
std::vector<int64_t> pipeline_stages(const ModelConfig& cfg, int pp, int64_t seq_len,
                                     const std::vector<int64_t>& split = {});

/// "4+4+4+3 blocks (costs 1.00 : 1.00 : 1.00 : 0.98)": the split in words, for a run's header.
std::string stages_summary(const ModelConfig& cfg, const std::vector<int64_t>& first,
                           int64_t seq_len);

}  // namespace nuri
