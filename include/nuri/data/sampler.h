// The global sampler (DESIGN.md, "Determinism and layout independence"). A sample is a window
// of T+1 consecutive tokens starting at a multiple of T; sample i covers tokens
// [i·T, i·T + T + 1) and gives inputs [0, T) and targets [1, T+1). In epoch e the samples are
// ordered by a permutation drawn from Philox(seed, e); global batch b is the G samples at
// positions [b·G, (b+1)·G) of that order. A data-parallel rank takes a contiguous slice of
// those G, and its micro-batches split the slice in order. The position (epoch, batch) is the
// sampler's whole state, so any world size resumes the same sequence.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "nuri/core/tensor.h"
#include "nuri/data/token_file.h"

namespace nuri {

struct DataPosition {
  int64_t epoch = 0;
  int64_t batch = 0;  ///< global batch index within the epoch
};

class GlobalSampler {
 public:
  /// seq_len T, global_batch G (samples per optimizer step across all ranks and micro-batches).
  /// With shuffle = false the order is the file order (validation).
  GlobalSampler(std::shared_ptr<TokenFile> tokens, int64_t seq_len, int64_t global_batch,
                uint64_t seed, bool shuffle = true);

  int64_t num_samples() const { return num_samples_; }
  int64_t batches_per_epoch() const { return num_samples_ / global_batch_; }
  int64_t global_batch() const { return global_batch_; }
  int64_t seq_len() const { return seq_len_; }

  /// Sample ids of global batch `pos`, in order.
  std::vector<int64_t> batch_samples(DataPosition pos) const;
  /// Fills tokens, targets [rows, T] (i32, host) with samples [first, first + rows) of global
  /// batch `pos`.
  void fill(DataPosition pos, int64_t first, int64_t rows, const Tensor& tokens,
            const Tensor& targets) const;
  /// Whether the tokens carry a loss mask (fine-tuning data): then targets are ignored unevenly.
  bool masked() const { return tokens_->has_mask(); }
  const TokenFile& tokens() const { return *tokens_; }
  /// The targets that count (not masked out) in samples [first, first + rows) of global batch
  /// `pos`; rows · T without a mask.
  int64_t trained_targets(DataPosition pos, int64_t first, int64_t rows) const;
  /// The position after `pos` (wraps into the next epoch).
  DataPosition next(DataPosition pos) const;

 private:
  const std::vector<int64_t>& order(int64_t epoch) const;

  std::shared_ptr<TokenFile> tokens_;
  int64_t seq_len_, global_batch_, num_samples_;
  uint64_t seed_;
  bool shuffle_;
  mutable int64_t cached_epoch_ = -1;
  mutable std::vector<int64_t> cached_order_;
};

/// One rank's stream of micro-batches: rank r of `world` takes samples
/// [r·B·accum, (r+1)·B·accum) of each global batch of G = B·accum·world samples; micro-batch m
/// of them is rows [m·B, (m+1)·B) of that slice.
class DataLoader {
 public:
  DataLoader(std::shared_ptr<TokenFile> tokens, int64_t seq_len, int64_t micro_batch,
             int64_t grad_accum, int64_t world, int64_t rank, uint64_t seed, bool shuffle = true);

  /// Fills tokens, targets [B, T] (i32, host) with micro-batch `micro` of the current position.
  void fill(int64_t micro, const Tensor& tokens, const Tensor& targets) const;
  /// Each micro-batch's share of the global batch's counted targets, for all world · grad_accum
  /// micro-batches of the current position in global order (rank-major): c_j / sum c. The loss
  /// weighted by these is the mean over every counted target of the global batch, whatever the
  /// layout; without a mask every share is 1 / (world · grad_accum). All zero when no target
  /// counts.
  std::vector<double> micro_shares() const;
  /// Moves to the next global batch.
  void advance() { pos_ = sampler_.next(pos_); }
  DataPosition position() const { return pos_; }
  void set_position(DataPosition pos) { pos_ = pos; }
  const GlobalSampler& sampler() const { return sampler_; }

 private:
  GlobalSampler sampler_;
  int64_t micro_batch_, grad_accum_, world_, rank_;
  DataPosition pos_;
};

}  // namespace nuri
