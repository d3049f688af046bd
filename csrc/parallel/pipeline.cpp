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
  u.block_attention = 3.0 * attention;
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
      // (a sum that wraps around to n_layer would pass the check below)
      NURI_CHECK(!__builtin_add_overflow(total, split[s], &total), "the stage split's blocks "
                 "sum past 2^63 at stage ", s, ", the model has ", L, "; the counts must add up "
                 "to n_layer");
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

// ---- Schedules -------------------------------------------------------------------------------

namespace nuri {

std::vector<std::vector<PipelineOp>> pipeline_schedule(int p, int m, int v) {
  NURI_CHECK(p >= 1 && m >= 1 && v >= 1, "a pipeline schedule needs p (", p, "), m (", m,
             ") and v (", v, ") of at least 1");
  NURI_CHECK(v == 1 || m % p == 0, "the interleaved schedule takes micro-batches in groups of "
             "the ", p, " stages: ", m, " micro-batches is not a multiple; choose a gradient "
             "accumulation that is, or v = 1");
  std::vector<std::vector<PipelineOp>> out(static_cast<size_t>(p));
  const int total = m * v;  // forwards (and backwards) per rank
  // The k-th forward (backward) of a rank: its chunk and micro-batch.
  auto op = [&](int k, bool backward) {
    if (v == 1) return PipelineOp{backward, 0, k};
    const int group = k % (p * v);
    const int chunk = backward ? v - 1 - group / p : group / p;
    return PipelineOp{backward, chunk, (k / (p * v)) * p + k % p};
  };
  for (int r = 0; r < p; ++r) {
    const int warm = std::min(total, v == 1 ? p - r - 1 : (p - r - 1) * 2 + (v - 1) * p);
    auto& ops = out[size_t(r)];
    for (int k = 0; k < warm; ++k) ops.push_back(op(k, false));
    for (int k = 0; k + warm < total; ++k) {
      ops.push_back(op(warm + k, false));
      ops.push_back(op(k, true));
    }
    for (int k = total - warm; k < total; ++k) ops.push_back(op(k, true));
  }
  return out;
}

namespace {

// Where an op's input comes from: the (rank, op) that must be done first, or none.
struct OpIndex {
  // index[r][backward][chunk][micro] = position in rank r's order
  std::vector<std::vector<std::vector<std::vector<int>>>> at;
  OpIndex(const std::vector<std::vector<PipelineOp>>& s, int v, int m) {
    at.assign(s.size(), std::vector<std::vector<std::vector<int>>>(
                            2, std::vector<std::vector<int>>(size_t(v), std::vector<int>(size_t(m), -1))));
    for (size_t r = 0; r < s.size(); ++r) {
      for (size_t i = 0; i < s[r].size(); ++i) {
        const PipelineOp& o = s[r][i];
        at[r][o.backward][size_t(o.chunk)][size_t(o.micro)] = int(i);
      }
    }
  }
};

int micro_count(const std::vector<std::vector<PipelineOp>>& s) {
  int m = 0;
  for (const auto& ops : s) {
    for (const auto& o : ops) m = std::max(m, o.micro + 1);
  }
  return m;
}

}  // namespace

ScheduleTiming simulate_schedule(const std::vector<std::vector<PipelineOp>>& s, int v,
                                 double tf, double tb) {
  const int p = int(s.size()), m = micro_count(s), stages = p * v;
  const OpIndex idx(s, v, m);
  ScheduleTiming t;
  t.start.resize(size_t(p));
  t.end.resize(size_t(p));
  t.in_flight.assign(size_t(p), std::vector<int>(size_t(v), 0));
  std::vector<size_t> next(size_t(p), 0);
  std::vector<double> free_at(size_t(p), 0);
  std::vector<std::vector<int>> live(size_t(p), std::vector<int>(size_t(v), 0));
  for (bool progress = true; progress;) {
    progress = false;
    for (int r = 0; r < p; ++r) {
      while (next[size_t(r)] < s[size_t(r)].size()) {
        const PipelineOp& o = s[size_t(r)][next[size_t(r)]];
        const int vs = o.chunk * p + r;
        // The op this one waits for: the previous stage's forward, the next stage's backward,
        // or (the last stage's backward) its own forward.
        int dr = -1, di = -1;
        if (!o.backward && vs > 0) {
          dr = (vs - 1) % p;
          di = idx.at[size_t(dr)][0][size_t((vs - 1) / p)][size_t(o.micro)];
        } else if (o.backward && vs < stages - 1) {
          dr = (vs + 1) % p;
          di = idx.at[size_t(dr)][1][size_t((vs + 1) / p)][size_t(o.micro)];
        } else if (o.backward) {
          dr = r;
          di = idx.at[size_t(r)][0][size_t(o.chunk)][size_t(o.micro)];
        }
        NURI_CHECK(dr < 0 || di >= 0, "pipeline schedule: rank ", r, "'s ",
                   o.backward ? "backward" : "forward", " of micro-batch ", o.micro,
                   " waits for an op no rank runs");
        if (dr >= 0 && size_t(di) >= t.end[size_t(dr)].size()) break;  // not done yet
        const double ready = dr >= 0 ? t.end[size_t(dr)][size_t(di)] : 0;
        const double begin = std::max(free_at[size_t(r)], ready);
        const double finish = begin + (o.backward ? tb : tf);
        t.start[size_t(r)].push_back(begin);
        t.end[size_t(r)].push_back(finish);
        free_at[size_t(r)] = finish;
        int& n = live[size_t(r)][size_t(o.chunk)];
        n += o.backward ? -1 : 1;
        t.in_flight[size_t(r)][size_t(o.chunk)] = std::max(t.in_flight[size_t(r)][size_t(o.chunk)], n);
        t.makespan = std::max(t.makespan, finish);
        ++next[size_t(r)];
        progress = true;
      }
    }
  }
  for (int r = 0; r < p; ++r) {
    NURI_CHECK(next[size_t(r)] == s[size_t(r)].size(), "pipeline schedule: rank ", r,
               " is stuck at op ", next[size_t(r)], " of ", s[size_t(r)].size(),
               " (its input never comes); the schedule deadlocks");
  }
  return t;
}

double ScheduleTiming::bubble() const {
  double busy = 0;
  for (size_t r = 0; r < start.size(); ++r) {
    for (size_t i = 0; i < start[r].size(); ++i) busy += end[r][i] - start[r][i];
  }
  return makespan > 0 ? 1 - busy / (double(start.size()) * makespan) : 0;
}

double pipeline_bubble_formula(int p, int m, int v) {
  return double(p - 1) / (double(v) * m + p - 1);
}

ScheduleTimes schedule_times(const std::vector<std::vector<PipelineOp>>& schedule,
                             const ScheduleTiming& timing, int v) {
  const int p = int(schedule.size());
  int m = 0;
  for (const PipelineOp& o : schedule.front()) m = std::max(m, o.micro + 1);
  const std::vector<std::vector<double>> zeros(size_t(p * v), std::vector<double>(size_t(m)));
  ScheduleTimes t{zeros, zeros, zeros, zeros};
  for (int r = 0; r < p; ++r) {
    for (size_t i = 0; i < schedule[size_t(r)].size(); ++i) {
      const PipelineOp& o = schedule[size_t(r)][i];
      const size_t s = size_t(o.chunk * p + r), k = size_t(o.micro);
      (o.backward ? t.b_start : t.f_start)[s][k] = timing.start[size_t(r)][i];
      (o.backward ? t.b_end : t.f_end)[s][k] = timing.end[size_t(r)][i];
    }
  }
  return t;
}

namespace {

/// What a rank's chunk holds, from the simulated schedule (see pipeline_buffers).
PipelineBuffers buffers_of(const ScheduleTiming& timing, const ScheduleTimes& times, int p, int m,
                           int v, int rank, int chunk) {
  const int vs = chunk * p + rank, stages = p * v;
  // Enough buffers that one is reused only after the op that read it has started (the
  // simulated order is the executed one): for each arrival, it and the earlier micro-batches
  // whose op has not started by then.
  auto staging = [&](bool grad) {
    const int from = grad ? vs + 1 : vs - 1;
    if (from < 0 || from >= stages) return 0;
    const auto& arrive = grad ? times.b_end[size_t(from)] : times.f_end[size_t(from)];
    const auto& start = grad ? times.b_start[size_t(vs)] : times.f_start[size_t(vs)];
    int most = 1;
    // A stage starts its micro-batches in order (a search for the first that had not started
    // by the arrival); any other schedule is counted one pair at a time.
    const bool in_order = std::is_sorted(start.begin(), start.end());
    for (int k = 0; k < m; ++k) {
      int pending = 1;
      if (in_order) {
        const auto first = std::lower_bound(start.begin(), start.begin() + k, arrive[size_t(k)]);
        pending += int(start.begin() + k - first);
      } else {
        for (int j = 0; j < k; ++j) pending += start[size_t(j)] >= arrive[size_t(k)] ? 1 : 0;
      }
      most = std::max(most, pending);
    }
    return most;
  };
  PipelineBuffers b;
  b.slots = std::max(1, timing.in_flight[size_t(rank)][size_t(chunk)]);
  b.act_staging = staging(false);
  b.grad_staging = staging(true);
  return b;
}

}  // namespace

PipelineBuffers pipeline_buffers(int p, int m, int v, int rank, int chunk) {
  const auto schedule = pipeline_schedule(p, m, v);
  const ScheduleTiming timing = simulate_schedule(schedule, v);
  return buffers_of(timing, schedule_times(schedule, timing, v), p, m, v, rank, chunk);
}

std::vector<PipelineBuffers> pipeline_buffers_by_rank(int p, int m) {
  const auto schedule = pipeline_schedule(p, m, 1);
  const ScheduleTiming timing = simulate_schedule(schedule, 1);
  const ScheduleTimes times = schedule_times(schedule, timing, 1);
  std::vector<PipelineBuffers> out;
  for (int r = 0; r < p; ++r) out.push_back(buffers_of(timing, times, p, m, 1, r, 0));
  return out;
}

}  // namespace nuri
