// The stage split of pipeline parallelism (nuri/parallel/pipeline.h): a contiguous partition of
// the blocks that minimizes the largest stage's cost, by dynamic programming over (stages,
// blocks): L·L·pp steps, nothing for any real model.
#include "nuri/parallel/pipeline.h"

#include <algorithm>
#include <cstdio>
#include <limits>

#include "nuri/core/error.h"

namespace nuri {

UnitCosts unit_costs(const ModelConfig& cfg, int64_t seq_len) {
  const double c = double(cfg.d_model), f = double(cfg.d_ff), hd = double(cfg.head_dim());
  const double q = double(cfg.n_head) * hd, kv = double(cfg.n_kv_head) * hd;
  const double mlp = (cfg.mlp == MlpKind::swiglu ? 3.0 : 2.0) * c * f;
  const double block_weights = c * (q + 2 * kv) + q * c + mlp;
  // Per token: forward 2 FLOPs a weight, attention 2·(QKᵀ and AV)·T·d halved for the mask;
  // the backward twice the forward.
  const double attention = 2.0 * double(seq_len) * q;
  UnitCosts u;
  u.blocks.assign(size_t(cfg.n_layer), 3.0 * (2.0 * block_weights + attention));
  u.head = 3.0 * 2.0 * double(cfg.padded_vocab()) * c;
  return u;
}

std::vector<int64_t> pipeline_stages(const ModelConfig& cfg, int pp, int64_t seq_len,
                                     const std::vector<int64_t>& split) {
  const int64_t L = cfg.n_layer;
  NURI_CHECK(pp >= 1 && pp <= L, "pipeline parallelism of ", pp, " stages for a model of ", L,
             " blocks: each stage needs at least one block; choose pp in [1, ", L, "]");
  std::vector<int64_t> first(size_t(pp) + 1, 0);
  if (!split.empty()) {
    NURI_CHECK(int64_t(split.size()) == pp, "the stage split gives ", split.size(),
               " stages, pp is ", pp, "; give one block count per stage");
    int64_t total = 0;
    for (size_t s = 0; s < split.size(); ++s) {
      NURI_CHECK(split[s] >= 1, "the stage split gives stage ", s, " ", split[s],
                 " blocks; every stage needs at least one");
      total += split[s];
      first[s + 1] = total;
    }
    NURI_CHECK(total == L, "the stage split's blocks sum to ", total, ", the model has ", L,
               "; the counts must add up to n_layer");
    return first;
  }
  const UnitCosts u = unit_costs(cfg, seq_len);
  std::vector<double> prefix(size_t(L) + 1, 0);  // prefix[i]: blocks [0, i)
  for (int64_t i = 0; i < L; ++i) prefix[size_t(i) + 1] = prefix[size_t(i)] + u.blocks[size_t(i)];
  auto cost = [&](int s, int64_t a, int64_t b) {  // stage s owning blocks [a, b)
    double c = prefix[size_t(b)] - prefix[size_t(a)];
    if (s == 0) c += u.embedding;
    if (s == pp - 1) c += u.head;
    return c;
  };
  // best[s][i]: the smallest largest cost of stages 0..s-1 over blocks [0, i); cut[s][i]: where
  // stage s-1 starts.
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<std::vector<double>> best(size_t(pp) + 1, std::vector<double>(size_t(L) + 1, inf));
  std::vector<std::vector<int64_t>> cut(size_t(pp) + 1, std::vector<int64_t>(size_t(L) + 1, 0));
  best[0][0] = 0;
  for (int s = 1; s <= pp; ++s) {
    for (int64_t i = s; i <= L - (pp - s); ++i) {
      for (int64_t j = s - 1; j < i; ++j) {  // stage s-1 owns [j, i)
        const double v = std::max(best[size_t(s) - 1][size_t(j)], cost(s - 1, j, i));
        if (v < best[size_t(s)][size_t(i)] * (1 - 1e-12)) {  // ties: the later cut (earlier stages fuller)
          best[size_t(s)][size_t(i)] = v;
          cut[size_t(s)][size_t(i)] = j;
        } else if (v <= best[size_t(s)][size_t(i)] * (1 + 1e-12)) {
          cut[size_t(s)][size_t(i)] = std::max(cut[size_t(s)][size_t(i)], j);
        }
      }
    }
  }
  first[size_t(pp)] = L;
  for (int s = pp; s >= 1; --s) first[size_t(s) - 1] = cut[size_t(s)][size_t(first[size_t(s)])];
  return first;
}

std::string stages_summary(const ModelConfig& cfg, const std::vector<int64_t>& first,
                           int64_t seq_len) {
  const UnitCosts u = unit_costs(cfg, seq_len);
  const int pp = int(first.size()) - 1;
  std::vector<double> costs;
  std::string blocks;
  for (int s = 0; s < pp; ++s) {
    double c = 0;
    for (int64_t i = first[size_t(s)]; i < first[size_t(s) + 1]; ++i) c += u.blocks[size_t(i)];
    if (s == 0) c += u.embedding;
    if (s == pp - 1) c += u.head;
    costs.push_back(c);
    blocks += (s ? "+" : "") + std::to_string(first[size_t(s) + 1] - first[size_t(s)]);
  }
  const double top = *std::max_element(costs.begin(), costs.end());
  std::string out = blocks + " blocks (costs";
  for (int s = 0; s < pp; ++s) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%s%.2f", s ? " : " : " ", costs[size_t(s)] / top);
    out += buf;
  }
  return out + ")";
}

}  // namespace nuri
