// The global sampler: Philox-keyed permutation per epoch, contiguous slices per rank.
#include "nuri/data/sampler.h"

#include <algorithm>
#include <numeric>
#include <string>

#include "nuri/core/rng.h"

namespace nuri {

GlobalSampler::GlobalSampler(std::shared_ptr<TokenFile> tokens, int64_t seq_len,
                             int64_t global_batch, uint64_t seed, bool shuffle)
    : tokens_(std::move(tokens)), seq_len_(seq_len), global_batch_(global_batch), seed_(seed),
      shuffle_(shuffle) {
  NURI_CHECK(tokens_ != nullptr, "GlobalSampler: no token file");
  NURI_CHECK(seq_len > 0, "sequence length (", seq_len, ") must be positive");
  NURI_CHECK(global_batch > 0, "global batch (", global_batch, " samples) must be positive");
  const int64_t window = tokens_->packed_window();
  NURI_CHECK(window == 0 || seq_len % window == 0, tokens_->path(), " was packed for sequences "
             "of ", window, " tokens (nuri tokenize --pack ", window, ": no row crosses a window "
             "of them); a sequence length of ", seq_len, ", not a multiple of it, would cut its "
             "rows. Train with seq_len ", window, " (--seq-len ", window, ") or a multiple, or "
             "tokenize again with --pack ", seq_len);
  num_samples_ = tokens_->size() > 0 ? (tokens_->size() - 1) / seq_len : 0;
  NURI_CHECK(num_samples_ >= global_batch, tokens_->path(), " has ", tokens_->size(),
             " tokens: ", num_samples_, " samples of ", seq_len + 1, " tokens, fewer than one global "
             "batch of ", global_batch, "; use more data, a shorter sequence or a smaller batch");
}

const std::vector<int64_t>& GlobalSampler::order(int64_t epoch) const {
  if (cached_epoch_ == epoch) return cached_order_;
  cached_order_.resize(size_t(num_samples_));
  std::iota(cached_order_.begin(), cached_order_.end(), int64_t(0));
  if (shuffle_) {
    // Sort by a 64-bit Philox key per sample: a uniformly random permutation that depends only
    // on (seed, epoch).
    const Philox rng(seed_, stream_id("data/order/epoch/" + std::to_string(epoch)));
    std::vector<uint64_t> key(static_cast<size_t>(num_samples_));
    for (int64_t i = 0; i < num_samples_; ++i) {
      const u32x4 r = rng.block(uint64_t(i));
      key[size_t(i)] = uint64_t(r[0]) << 32 | r[1];
    }
    std::sort(cached_order_.begin(), cached_order_.end(), [&](int64_t a, int64_t b) {
      return key[size_t(a)] != key[size_t(b)] ? key[size_t(a)] < key[size_t(b)] : a < b;
    });
  }
  cached_epoch_ = epoch;
  return cached_order_;
}

std::vector<int64_t> GlobalSampler::batch_samples(DataPosition pos) const {
  NURI_CHECK(pos.epoch >= 0 && pos.batch >= 0 && pos.batch < batches_per_epoch(),
             "data position (epoch ", pos.epoch, ", batch ", pos.batch, ") is outside the ",
             batches_per_epoch(), " batches of an epoch");
  const auto& ord = order(pos.epoch);
  return std::vector<int64_t>(ord.begin() + pos.batch * global_batch_,
                              ord.begin() + (pos.batch + 1) * global_batch_);
}

void GlobalSampler::fill(DataPosition pos, int64_t first, int64_t rows, const Tensor& tokens,
                         const Tensor& targets) const {
  NURI_CHECK(first >= 0 && rows > 0 && first + rows <= global_batch_, "rows [", first, ", ",
             first + rows, ") are outside the global batch of ", global_batch_);
  for (const Tensor* t : {&tokens, &targets}) {
    NURI_CHECK(t->dtype() == DType::i32 && t->device().is_cpu() && t->is_contiguous() &&
                   t->shape() == Shape({rows, seq_len_}),
               "sampler output must be a contiguous i32 host tensor of shape ",
               shape_str({rows, seq_len_}), ", got ", t->str());
  }
  const auto samples = batch_samples(pos);
  std::vector<int32_t> window(size_t(seq_len_ + 1));
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t start = samples[size_t(first + r)] * seq_len_;
    tokens_->read(start, seq_len_ + 1, window.data());
    std::copy(window.begin(), window.end() - 1, tokens.data<int32_t>() + r * seq_len_);
    int32_t* tg = targets.data<int32_t>() + r * seq_len_;
    std::copy(window.begin() + 1, window.end(), tg);
    if (tokens_->has_mask()) {  // fine-tuning data: only the masked-in targets are trained on
      for (int64_t k = 0; k < seq_len_; ++k) {
        if (!tokens_->trained(start + k + 1)) tg[k] = kIgnoreIndex;
      }
    }
  }
}

int64_t GlobalSampler::trained_targets(DataPosition pos, int64_t first, int64_t rows) const {
  NURI_CHECK(first >= 0 && rows >= 0 && first + rows <= global_batch_, "rows [", first, ", ",
             first + rows, ") are outside the global batch of ", global_batch_);
  if (!tokens_->has_mask()) return rows * seq_len_;
  const auto samples = batch_samples(pos);
  int64_t n = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t start = samples[size_t(first + r)] * seq_len_;
    for (int64_t k = 1; k <= seq_len_; ++k) n += tokens_->trained(start + k);
  }
  return n;
}

DataPosition GlobalSampler::next(DataPosition pos) const {
  return pos.batch + 1 < batches_per_epoch() ? DataPosition{pos.epoch, pos.batch + 1}
                                             : DataPosition{pos.epoch + 1, 0};
}

DataLoader::DataLoader(std::shared_ptr<TokenFile> tokens, int64_t seq_len, int64_t micro_batch,
                       int64_t grad_accum, int64_t world, int64_t rank, uint64_t seed,
                       bool shuffle)
    : sampler_(std::move(tokens), seq_len, micro_batch * grad_accum * world, seed, shuffle),
      micro_batch_(micro_batch), grad_accum_(grad_accum), world_(world), rank_(rank) {
  NURI_CHECK(micro_batch > 0 && grad_accum > 0, "micro batch (", micro_batch,
             ") and gradient accumulation steps (", grad_accum, ") must be positive");
  NURI_CHECK(world > 0 && rank >= 0 && rank < world, "rank ", rank, " is outside world size ", world);
}

void DataLoader::fill(int64_t micro, const Tensor& tokens, const Tensor& targets) const {
  NURI_CHECK(micro >= 0 && micro < grad_accum_, "micro-batch ", micro, " is outside [0, ",
             grad_accum_, ")");
  sampler_.fill(pos_, (rank_ * grad_accum_ + micro) * micro_batch_, micro_batch_, tokens, targets);
}

std::vector<double> DataLoader::micro_shares() const {
  const int64_t m = world_ * grad_accum_;
  std::vector<double> share(size_t(m), 1.0 / double(m));
  if (!sampler_.masked()) return share;
  int64_t total = 0;
  for (int64_t j = 0; j < m; ++j) {
    const int64_t c = sampler_.trained_targets(pos_, j * micro_batch_, micro_batch_);
    share[size_t(j)] = double(c);
    total += c;
  }
  for (double& x : share) x = total > 0 ? x / double(total) : 0.0;
  return share;
}

}  // namespace nuri
