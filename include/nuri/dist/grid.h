// The process-group grid (DESIGN.md, "Distributed"): world = dp × tp × pp ranks, with tensor
// parallelism fastest-varying (its groups are neighbouring ranks, normally one node's NVLink
// domain), then data parallelism, then pipeline stages:
//   rank = tp_index + tp · (dp_index + dp · pp_index)
// Every group and neighbour is a function of the rank; there is no global state.
#pragma once

#include <string>
#include <vector>

namespace nuri {

struct GridCoord {
  int dp = 0, tp = 0, pp = 0;
  bool operator==(const GridCoord&) const = default;
};

class ProcessGrid {
 public:
  /// Throws nuri::Error unless each size is >= 1 and dp · tp · pp == world_size.
  ProcessGrid(int world_size, int dp, int tp = 1, int pp = 1);

  int world_size() const { return dp_ * tp_ * pp_; }
  int dp() const { return dp_; }
  int tp() const { return tp_; }
  int pp() const { return pp_; }

  GridCoord coord(int rank) const;
  int rank(const GridCoord& c) const;

  /// The ranks that share every coordinate of `rank` but the named one, ordered by that
  /// coordinate (so a group's member i has index i along it); `rank` is among them.
  std::vector<int> dp_group(int rank) const;
  std::vector<int> tp_group(int rank) const;
  std::vector<int> pp_group(int rank) const;
  /// The next and previous pipeline stage of `rank` (same dp and tp index), or -1 at the ends.
  int pp_next(int rank) const;
  int pp_prev(int rank) const;

  /// "dp=2 tp=2 pp=1 (4 ranks)"
  std::string str() const;

 private:
  void check_rank(int rank) const;
  int dp_, tp_, pp_;
};

}  // namespace nuri
