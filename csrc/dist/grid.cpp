// The dp × tp × pp process grid: every group from arithmetic on ranks.
#include "nuri/dist/grid.h"

#include "nuri/core/error.h"

namespace nuri {

ProcessGrid::ProcessGrid(int world_size, int dp, int tp, int pp) : dp_(dp), tp_(tp), pp_(pp) {
  NURI_CHECK(dp >= 1 && tp >= 1 && pp >= 1, "process grid dp=", dp, " tp=", tp, " pp=", pp,
             ": every size must be at least 1");
  NURI_CHECK(int64_t(dp) * tp * pp == world_size, "process grid dp=", dp, " tp=", tp, " pp=", pp,
             " needs ", int64_t(dp) * tp * pp, " ranks, but the job has ", world_size,
             "; choose sizes whose product is the world size");
}

void ProcessGrid::check_rank(int rank) const {
  NURI_CHECK(rank >= 0 && rank < world_size(), "rank ", rank, " is outside the grid ", str());
}

GridCoord ProcessGrid::coord(int rank) const {
  check_rank(rank);
  return {rank / tp_ % dp_, rank % tp_, rank / (tp_ * dp_)};
}

int ProcessGrid::rank(const GridCoord& c) const {
  NURI_CHECK(c.dp >= 0 && c.dp < dp_ && c.tp >= 0 && c.tp < tp_ && c.pp >= 0 && c.pp < pp_,
             "grid coordinate (dp ", c.dp, ", tp ", c.tp, ", pp ", c.pp, ") is outside ", str());
  return c.tp + tp_ * (c.dp + dp_ * c.pp);
}

std::vector<int> ProcessGrid::dp_group(int r) const {
  GridCoord c = coord(r);
  std::vector<int> g;
  for (c.dp = 0; c.dp < dp_; ++c.dp) g.push_back(rank(c));
  return g;
}

std::vector<int> ProcessGrid::tp_group(int r) const {
  GridCoord c = coord(r);
  std::vector<int> g;
  for (c.tp = 0; c.tp < tp_; ++c.tp) g.push_back(rank(c));
  return g;
}

std::vector<int> ProcessGrid::pp_group(int r) const {
  GridCoord c = coord(r);
  std::vector<int> g;
  for (c.pp = 0; c.pp < pp_; ++c.pp) g.push_back(rank(c));
  return g;
}

int ProcessGrid::pp_next(int r) const {
  GridCoord c = coord(r);
  return c.pp + 1 < pp_ ? rank({c.dp, c.tp, c.pp + 1}) : -1;
}

int ProcessGrid::pp_prev(int r) const {
  GridCoord c = coord(r);
  return c.pp > 0 ? rank({c.dp, c.tp, c.pp - 1}) : -1;
}

std::string ProcessGrid::str() const {
  return "dp=" + std::to_string(dp_) + " tp=" + std::to_string(tp_) + " pp=" + std::to_string(pp_) +
         " (" + std::to_string(world_size()) + " ranks)";
}

}  // namespace nuri
