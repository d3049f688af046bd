// Trainer: the step loop over the Transformer and AdamW, with evaluation and sampling.
#include "nuri/train/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <atomic>
#include <filesystem>
#include <limits>
#include <numeric>
#include <thread>

#include <nlohmann/json.hpp>

#include "core/json_checked.h"
#include "nuri/ckpt/checkpoint.h"
#include "nuri/ckpt/safetensors.h"
#include "nuri/core/log.h"
#include "nuri/core/rng.h"
#include "nuri/core/settings.h"

namespace nuri {

const Settings& train_settings() {
  static const Settings s = [] {
    Settings t;
    using C = TrainConfig;
    t.add("steps", &C::steps, "optimizer steps").at_least(1);
    t.add("micro_batch", &C::micro_batch, "sequences per micro-batch (per rank)").at_least(1);
    t.add("seq_len", &C::seq_len, "tokens per sequence").at_least(1);
    t.add("grad_accum", &C::grad_accum, "micro-batches per step (per rank)").at_least(1);
    t.add("global_batch", &C::global_batch,
          "sequences per step over every data-parallel rank; > 0: grad_accum is derived from "
          "it for the job's ranks, so the same settings resume on any number of them (0: "
          "micro_batch x grad_accum x ranks)")
        .at_least(0);
    t.add("lr", &C::lr, "peak learning rate").above(0);
    t.add("min_lr_ratio", &C::min_lr_ratio, "the cosine decays to lr * min_lr_ratio")
        .at_least(0).at_most(1);
    t.add("warmup_steps", &C::warmup_steps, "linear warmup steps").at_least(0);
    t.add("weight_decay", &C::weight_decay, "AdamW weight decay (matrices only)").at_least(0);
    t.add("beta1", &C::beta1, "AdamW beta1").at_least(0).below(1);
    t.add("beta2", &C::beta2, "AdamW beta2").at_least(0).below(1);
    t.add("eps", &C::eps, "AdamW epsilon").above(0);
    t.add("grad_clip", &C::grad_clip, "largest global gradient norm; <= 0 disables clipping");
    t.add("eval_every", &C::eval_every, "validation every N steps (0: only at the end)")
        .at_least(0);
    t.add("eval_batches", &C::eval_batches,
          "global batches of validation data per evaluation (the first ones in file order)")
        .at_least(1);
    t.add("seed", &C::seed, "model initialization and data order").at_least(0);
    t.choice("on_nonfinite", &C::on_nonfinite,
             {{"skip", NonFinitePolicy::skip}, {"stop", NonFinitePolicy::stop}},
             "a non-finite loss or gradient norm skips the update, or stops the run");
    t.add("skip_limit", &C::skip_limit,
          "skipped steps in a row that stop the run as diverged (on_nonfinite=skip; 0: never)")
        .at_least(0);
    t.choice("recompute", &C::recompute,
             {{"none", Recompute::none}, {"selective", Recompute::selective},
              {"full", Recompute::full}},
             "activations a block keeps: all (none), its products (selective: norms and SwiGLU "
             "recomputed), or its input (full: the block's forward runs again)");
    t.add("recompute_every", &C::recompute_every,
          "recompute blocks 0, k, 2k, ... only (the others keep everything)").at_least(1);
    t.choice("document_mask", &C::document_mask,
             {{"off", DocumentMask::off}, {"end", DocumentMask::end},
              {"start", DocumentMask::start}},
             "attention inside documents (packed data): the separator ends its document (end: "
             "ids <|endoftext|>, as nuri tokenize writes) or begins it (start: <|endoftext|> "
             "ids, as llm.c's GPT-2 shards)");
    t.add("document_separator", &C::document_separator,
          "the separator's token id, for document_mask (-1: the data's end-of-text, as nuri "
          "tokenize records it)")
        .at_least(-1);
    return t;
  }();
  return s;
}

void TrainConfig::validate() const {
  train_settings().check_bounds(this, "");  // every field's range; numbers must be finite
  if (document_separator >= 0 && document_mask == DocumentMask::off) {
    throw ConfigError("train.document_separator: " + std::to_string(document_separator) +
                      " is given but train.document_mask is off; set document_mask to end or "
                      "start (where the separator stands in its document)");
  }
}

TrainConfig with_global_batch(const TrainConfig& cfg, int64_t dp) {
  if (cfg.global_batch == 0) return cfg;
  NURI_CHECK(dp >= 1, "with_global_batch: ", dp, " data-parallel ranks");
  const int64_t per_step = cfg.micro_batch * dp;  // sequences of one micro-batch on every rank
  if (cfg.global_batch % per_step != 0) {
    // The micro-batches that divide the global batch on these ranks: the divisors of
    // global_batch / dp (none where dp does not divide it), the smallest ten named.
    std::vector<int64_t> divisors;
    if (cfg.global_batch % dp == 0) {
      const int64_t q = cfg.global_batch / dp;
      for (int64_t b = 1; b * b <= q; ++b) {
        if (q % b != 0) continue;
        divisors.push_back(b);
        if (b * b != q) divisors.push_back(q / b);
      }
      std::sort(divisors.begin(), divisors.end());
    }
    std::string fits;
    for (size_t i = 0; i < divisors.size() && i < 10; ++i) {
      fits += (i ? ", " : "") + std::to_string(divisors[i]);
    }
    if (divisors.size() > 10) fits += ", ... (" + std::to_string(divisors.size()) + " in all)";
    throw ConfigError(strprintf(
        "train.global_batch %lld is not a multiple of train.micro_batch %lld x %lld "
        "data-parallel ranks = %lld sequences; %s",
        (long long)cfg.global_batch, (long long)cfg.micro_batch, (long long)dp,
        (long long)per_step,
        fits.empty() ? ("no micro-batch size divides it on " + std::to_string(dp) +
                        " ranks: choose a global batch that is a multiple of the ranks").c_str()
                     : ("choose micro_batch among " + fits + " on " + std::to_string(dp) +
                        " ranks").c_str()));
  }
  TrainConfig c = cfg;
  c.grad_accum = cfg.global_batch / per_step;
  return c;
}

float learning_rate(const TrainConfig& cfg, int64_t step) {
  NURI_CHECK(step >= 0, "learning_rate: step ", step, " (steps count from 0)");
  if (step < cfg.warmup_steps) return cfg.lr * float(step + 1) / float(cfg.warmup_steps);
  const float floor = cfg.lr * cfg.min_lr_ratio;
  const int64_t span = cfg.steps - cfg.warmup_steps;
  if (span <= 1) return cfg.lr;
  const double progress = std::min(1.0, double(step - cfg.warmup_steps) / double(span - 1));
  return floor + (cfg.lr - floor) * float(0.5 * (1.0 + std::cos(M_PI * progress)));
}

void for_each_piece(const std::vector<ParamSpec>& layout, int64_t lo, int64_t hi,
                    const std::function<void(const Piece&)>& fn) {
  for (const ParamSpec& p : layout) {
    if (p.offset + p.numel() <= lo || p.offset >= hi) continue;
    Piece block;  // whole rows of a column-parallel slice, gathered into one block
    auto flush = [&] {
      if (block.rows == 1) block.rows = 0;  // one row is a range
      if (block.p) fn(block);
      block = Piece{};
    };
    p.for_each_run([&](int64_t local, int64_t logical, int64_t n) {
      const int64_t a = std::max(lo, p.offset + local), b = std::min(hi, p.offset + local + n);
      if (a >= b) return;
      const Piece q{&p, a, logical + (a - p.offset - local), b - a, 0};
      if (!(p.split() && p.split_dim == 1 && b - a == n)) {  // a range
        flush();
        fn(q);
        return;
      }
      if (block.p && block.flat + block.n == a) {  // the next whole row
        block.n += n;
        ++block.rows;
        return;
      }
      flush();
      block = q;
      block.rows = 1;
    });
    flush();
  }
}

static AdamWParams adamw_params(const TrainConfig& c) {
  AdamWParams p;
  p.beta1 = c.beta1;
  p.beta2 = c.beta2;
  p.eps = c.eps;
  p.weight_decay = c.weight_decay;
  return p;
}

namespace {

// The communicator of the constructor without a grid: the model must be whole.
std::shared_ptr<Communicator> whole_model(const Transformer& model,
                                          std::shared_ptr<Communicator> comm,
                                          const ParallelConfig& parallel) {
  NURI_CHECK(model.first_stage() && model.last_stage(), "Trainer: the model holds blocks [",
             model.stage().first, ", ", model.stage().last, ") of ", model.config().n_layer,
             ", one pipeline stage; train it with the Trainer on a grid (make_grid_groups(world, "
             "tp, pp), Trainer(model, cfg, train, val, grid, parallel))");
  NURI_CHECK(parallel.pp == 1 && parallel.tp == 1, "Trainer: parallel.tp=", parallel.tp,
             " and parallel.pp=", parallel.pp, " need the Trainer on a grid (make_grid_groups, "
             "Trainer(model, cfg, train, val, grid, parallel))");
  NURI_CHECK(model.tensor_parallel().size == 1, "Trainer: the model is rank ",
             model.tensor_parallel().rank, " of a tensor-parallel group of ",
             model.tensor_parallel().size, "; train it with the Trainer on a grid "
             "(make_grid_groups, Trainer(model, cfg, train, val, grid, parallel))");
  return comm;
}

// The grid's data-parallel communicator, once the model is known to be this rank's slice (before
// any collective, so a rank with the wrong model fails alone instead of leaving the others in
// a collective until the timeout).
std::shared_ptr<Communicator> grid_dp(const Transformer& model, const GridGroups& grid) {
  const TensorParallelRank place = model.tensor_parallel();
  NURI_CHECK(place.size == grid.grid.tp() && place.rank == grid.coord.tp, "Trainer: the model is "
             "rank ", place.rank, " of a tensor-parallel group of ", place.size, ", the grid ",
             grid.grid.str(), " puts this process at tp index ", grid.coord.tp, "; build the "
             "model with TensorParallelRank{grid.coord.tp, grid.grid.tp()}");
  const int pp = grid.grid.pp(), s = grid.coord.pp;
  NURI_CHECK(model.first_stage() == (s == 0) && model.last_stage() == (s == pp - 1),
             "Trainer: the model holds blocks [", model.stage().first, ", ", model.stage().last,
             ") of ", model.config().n_layer, ", the grid ", grid.grid.str(), " puts this process "
             "at pipeline stage ", s, "; build the model with PipelineStage{first[", s,
             "], first[", s + 1, "]} of pipeline_stages(cfg, ", pp, ", seq_len)");
  return grid.dp;
}

// Ranks reduce gradients on a progress thread while the training thread makes the tensor- and
// pipeline-parallel calls: both at once needs a library that allows it (MPI: THREAD_MULTIPLE;
// NCCL never, for communicators of one device: GPU ranks then reduce after the backward).
ParallelConfig grid_parallel(const Transformer& model, const GridGroups& grid,
                             ParallelConfig par) {
  auto concurrent = [](const std::shared_ptr<Communicator>& c) {
    return !c || c->concurrent_with_other_communicators();
  };
  const bool cpu = model.backend().device().is_cpu();
  if (par.overlap && grid.dp && (grid.tp || grid.pp) &&
      (!cpu || !(concurrent(grid.dp) && concurrent(grid.tp) && concurrent(grid.pp)))) {
    par.overlap = false;
    if (grid.dp->rank() == 0 && grid.coord.tp == 0) {
      NURI_LOG(info, "the ", cpu ? grid.dp->backend_name() : std::string("nccl"),
               " library cannot run the data-parallel reductions beside the tensor- and "
               "pipeline-parallel calls: gradients are reduced after the backward");
    }
  }
  return par;
}

}  // namespace

Trainer::Trainer(Transformer& model, const TrainConfig& cfg, std::shared_ptr<TokenFile> train,
                 std::shared_ptr<TokenFile> val, std::shared_ptr<Communicator> comm,
                 const ParallelConfig& parallel)
    : Trainer(model, cfg, std::move(train), std::move(val),
              whole_model(model, std::move(comm), parallel), parallel, GridTag{}) {}

namespace {
/// `data`, every token of which is a token of `model`'s vocabulary (else an error naming the
/// first that is not, before any step: a sampled one would stop the run at that step).
std::shared_ptr<TokenFile> of_vocabulary(std::shared_ptr<TokenFile> data,
                                         const Transformer& model) {
  if (data) data->check_vocab(model.config().vocab_size);
  return data;
}
}  // namespace

Trainer::Trainer(Transformer& model, const TrainConfig& cfg, std::shared_ptr<TokenFile> train,
                 std::shared_ptr<TokenFile> val, std::shared_ptr<Communicator> comm,
                 const ParallelConfig& parallel, GridTag)
    : model_(model),
      cfg_((cfg.validate(), with_global_batch(cfg, comm ? comm->size() : 1))),
      loader_(of_vocabulary(std::move(train), model), cfg_.seq_len, cfg_.micro_batch,
              cfg_.grad_accum, comm ? comm->size() : 1, comm ? comm->rank() : 0, cfg_.seed),
      val_(of_vocabulary(std::move(val), model)),
      dp_(comm ? std::make_unique<DataParallel>(
                     // GPU ranks reduce device gradients over NCCL, bootstrapped through comm.
                     comm->size() > 1 ? make_device_communicator(comm, model.backend()) : comm,
                     parallel)
               : nullptr) {
  model.set_recompute(cfg.recompute, cfg.recompute_every);
  if (cfg.document_mask != DocumentMask::off) {
    const int64_t sep = cfg.document_separator >= 0 ? cfg.document_separator
                                                     : loader_.sampler().tokens().end_of_text();
    if (sep < 0) {
      throw ConfigError(
          "train.document_mask: the training data records no end-of-text id (shards of nuri "
          "tokenize do, in tokenize.json); set train.document_separator to the id that ends "
          "a document (GPT-2's <|endoftext|> is 50256)");
    }
    if (sep >= model.config().vocab_size) {
      throw ConfigError("train.document_separator: " + std::to_string(sep) +
                        " is not a token id of the model's vocabulary of " +
                        std::to_string(model.config().vocab_size));
    }
    model.set_document_separator(sep, cfg.document_mask == DocumentMask::start);
  }  // (off: the model's own setting stands, -1 unless set on it)
  stages_ = {model.stage()};
  if (dp_) dp_->attach(model);
  if (dp_ && dp_->zero_stage() >= 1) {
    const auto [lo, hi] = dp_->shard(model.parameter_count());
    opt_ = std::make_unique<AdamW>(model, adamw_params(cfg), lo, hi, dp_->gradient_shard());
  } else {
    parallel.validate();  // one process: every stage is the whole model's update
    opt_ = std::make_unique<AdamW>(model, adamw_params(cfg));
  }
  NURI_CHECK(cfg.seq_len <= model.config().max_seq_len, "seq_len (", cfg.seq_len,
             ") exceeds the model's max_seq_len (", model.config().max_seq_len, ")");
  check_sliding_window(model.config(), cfg.seq_len);
  tokens_ = Tensor::empty({cfg.micro_batch, cfg.seq_len}, DType::i32);
  targets_ = Tensor::empty({cfg.micro_batch, cfg.seq_len}, DType::i32);
}

void Trainer::sum_norm_gradients() {
  // Sequence parallelism: each rank's norm-weight gradients come from its token rows alone; the
  // sum over the group is the gradient (whatever ZeRO stage holds them: the sum is linear).
  TensorParallelHooks* tp = model_.tensor_parallel_hooks();
  std::vector<std::pair<int64_t, Tensor>> ranges;  // (first flat element, the f32 range)
  if (dp_ && dp_->zero_stage() >= 2) {
    ranges.push_back({dp_->shard(model_.parameter_count()).first, dp_->gradient_shard()});
  } else {
    ranges.push_back({0, model_.grad_buffer()});
  }
  for (const auto& [start, flat] : ranges) {
    const int64_t end = start + flat.numel();
    for (const ParamSpec& p : model_.layout()) {
      const int64_t a = std::max(start, p.offset), b = std::min(end, p.offset + p.numel());
      if (p.norm && a < b) tp->all_reduce(flat.slice(0, a - start, b - start));
    }
  }
}

void Trainer::sum_tied_shards() {
  // wte leads both stages' layouts: each rank places its shard's part of it in a zeroed
  // wte-sized buffer; the sum over the first and last stage's dp ranks is then both stages'
  // whole gradient (each stage's shards tile wte once), and each rank takes its part back.
  // Chunk by chunk, a gradient bucket's bytes at a time: a whole buffer would be the table's
  // size (4 GiB of f32 for 128k tokens × 8192), on the ranks ZeRO 2 and 3 are to spare.
  const int64_t w = model_.layout().front().numel();
  const auto [lo, hi] = dp_->shard(model_.parameter_count());
  const Tensor shard = dp_->gradient_shard();
  Backend& be = model_.backend();
  MemoryScope gradients(MemoryCategory::gradients);
  const int64_t chunk = std::clamp<int64_t>(dp_->config().bucket_bytes / 4, 1, w);
  Tensor part = be.empty({chunk});
  for (int64_t c0 = 0; c0 < w; c0 += chunk) {  // the same chunks on every rank of the group
    const int64_t c1 = std::min(w, c0 + chunk);
    const Tensor buf = part.slice(0, 0, c1 - c0);
    be.zero(buf);
    const int64_t a = std::max(lo, c0), b = std::min(hi, c1);
    if (a < b) be.copy(shard.slice(0, a - lo, b - lo), buf.slice(0, a - c0, b - c0));
    tied_->all_reduce(buf);
    if (a < b) be.copy(buf.slice(0, a - c0, b - c0), shard.slice(0, a - lo, b - lo));
  }
}

void Trainer::split_gradients(std::vector<Tensor>& grads, std::vector<Tensor>& whole) const {
  // grads: the gradients this rank norms (its ZeRO 2 shard, or the model's tensors); becomes
  // the parts of tensor-parallel-split tensors, `whole` the rest (replicas left out).
  std::vector<Tensor> split;
  const bool shard = dp_ && dp_->zero_stage() >= 2;
  const int64_t start = shard ? dp_->shard(model_.parameter_count()).first : 0;
  const Tensor flat = shard ? dp_->gradient_shard() : model_.grad_buffer();
  const int64_t end = start + flat.numel();
  for (const ParamSpec& p : model_.layout()) {
    const int64_t a = std::max(start, p.offset), b = std::min(end, p.offset + p.numel());
    if (a >= b || p.replica) continue;
    (p.split() ? split : whole).push_back(flat.slice(0, a - start, b - start));
  }
  grads = std::move(split);
}

Transformer grid_model(const ModelConfig& cfg, std::shared_ptr<Backend> backend, uint64_t seed,
                       const GridGroups& grid, int zero_stage, int64_t seq_len, WeightInit init) {
  const std::vector<int64_t> first = pipeline_stages(cfg, grid.grid.pp(), seq_len);
  const PipelineStage stage{first[size_t(grid.coord.pp)], first[size_t(grid.coord.pp) + 1]};
  const TensorParallelRank place{grid.coord.tp, grid.grid.tp()};
  WeightShard shard;
  if (zero_stage == 3 && grid.grid.dp() > 1) {
    const std::vector<ParamSpec> layout = param_layout(cfg, place, stage);
    const auto [lo, hi] = DataParallel::shard_of(layout.back().offset + layout.back().numel(),
                                                 grid.grid.dp(), grid.coord.dp);
    shard = {lo, hi};
  }
  return Transformer(cfg, std::move(backend), seed, shard, place, stage, init);
}

Trainer::Trainer(Transformer& model, const TrainConfig& cfg, std::shared_ptr<TokenFile> train,
                 std::shared_ptr<TokenFile> val, const GridGroups& grid,
                 const ParallelConfig& parallel)
    : Trainer(model, cfg, std::move(train), std::move(val), grid_dp(model, grid),
              grid_parallel(model, grid, parallel), GridTag{}) {
  if (grid.tp) {
    // GPU ranks move the activations over NCCL, bootstrapped through the tp group.
    tp_ = std::make_unique<TensorParallel>(make_device_communicator(grid.tp, model.backend()));
    model.set_tensor_parallel_hooks(tp_.get());
  }
  model.set_sequence_parallel(parallel.sequence_parallel);
  world_ = grid.world;
  grid_ = grid.grid;
  if (grid.pp) {
    // GPU ranks move the activations over NCCL, bootstrapped through the pp group.
    pp_ = grid.pp;
    // (ZeRO 2 and 3 sum a tied embedding's gradient shards over a group of their own: tied_)
    const bool shards_tied = model.config().tied_embeddings && dp_ && dp_->zero_stage() >= 2;
    pipe_tied_by_trainer_ = shards_tied;
    pipe_ = std::make_unique<Pipeline>(std::vector<Transformer*>{&model},
                                       make_device_communicator(grid.pp, model.backend()),
                                       !shards_tied);
    // Every stage's blocks (for the model file's assembly): gathered from the stages.
    Tensor mine = Tensor::empty({2}, DType::f32), all = Tensor::empty({2 * grid.grid.pp()}, DType::f32);
    mine.data<float>()[0] = float(model.stage().first);
    mine.data<float>()[1] = float(model.stage().last);
    pp_->all_gather(mine, all);
    stages_.clear();
    for (int s = 0; s < grid.grid.pp(); ++s) {
      stages_.push_back({int64_t(all.data<float>()[2 * s]), int64_t(all.data<float>()[2 * s + 1])});
      NURI_CHECK(s == 0 || stages_[size_t(s)].first == stages_[size_t(s) - 1].last, "Trainer: "
                 "pipeline stage ", s, " holds blocks from ", stages_[size_t(s)].first,
                 ", stage ", s - 1, " up to ", stages_[size_t(s) - 1].last, "; the stages must "
                 "be contiguous (pipeline_stages gives such a split)");
    }
    // Tied embeddings with the gradients sharded over dp (ZeRO 2, 3): the first and the last
    // stage's dp ranks (of this tp index) sum wte's gradient over a group of all of them.
    const int last = grid.grid.pp() - 1;
    if (shards_tied && (grid.coord.pp == 0 || grid.coord.pp == last)) {
      std::vector<int> ranks;
      for (const int s : {0, last}) {
        for (int d = 0; d < grid.grid.dp(); ++d) ranks.push_back(grid.grid.rank({d, grid.coord.tp, s}));
      }
      tied_ = make_device_communicator(std::shared_ptr<Communicator>(grid.world->split(ranks)),
                                       model.backend());
    }
    for (int64_t m = 0; m < cfg_.grad_accum; ++m) {
      micro_.push_back({Tensor::empty({cfg_.micro_batch, cfg_.seq_len}, DType::i32),
                        Tensor::empty({cfg_.micro_batch, cfg_.seq_len}, DType::i32)});
    }
  }
}

Communicator* Trainer::all_ranks() const {
  if (world_) return world_->host_communicator();
  return dp_ ? dp_->comm().host_communicator() : nullptr;
}

StepStats Trainer::step() {
  const auto t0 = std::chrono::steady_clock::now();
  StepStats s;
  s.checkpoint = poll_checkpoint(/*wait=*/false);  // an asynchronous save, once all ranks wrote
  s.lr = learning_rate(cfg_, step_);
  model_.zero_grad();
  // Nothing in the loop waits for the device: the batches are uploaded without a
  // synchronization (Backend::copy), the losses stay on the device until the norm is read.
  // Data parallel: each rank's g micro-batches are 1 / (g · world) of the global batch, and the
  // gradient sum over ranks is the global batch's gradient, as one process with g · world
  // micro-batches would accumulate it.
  const int64_t g = cfg_.grad_accum, world = dp_ ? dp_->world() : 1;
  // A micro-batch's loss is the mean over its counted targets. With a loss mask they count
  // unevenly, so micro-batch j is weighted by its share of the global batch's counted targets
  // (DataLoader::micro_shares): the step's loss and gradient are then the mean over all of them
  // whatever the split into micro_batch × grad_accum × ranks, and a resume on another layout
  // follows the same curve. Without a mask every weight is 1 / (g · world), as before.
  std::vector<float> scales(size_t(g), 1.f / float(g * world));
  std::vector<double> shares;
  if (loader_.sampler().masked()) {
    shares = loader_.micro_shares();
    const int64_t rank = dp_ ? dp_->rank() : 0;
    for (int64_t m = 0; m < g; ++m) scales[size_t(m)] = float(shares[size_t(rank * g + m)]);
  }
  Backend& be = model_.backend();
  if (!stats_dev_.defined()) stats_dev_ = be.empty({g + 2});  // losses, norm, whole tensors' norm
  // Data parallel: the backward hands each finished bucket of gradients to dp_, which reduces it
  // over the ranks while the backward goes on (stages 0, 1: on the last micro-batch only).
  if (dp_) dp_->begin_step();
  std::vector<float> pipe_losses;  // pipeline: the micro-batches' losses, on every stage
  if (pipe_) {
    // 1F1B over the micro-batches; data parallelism's reductions around each backward as
    // without the pipeline (the last micro-batch's backward is the last one's).
    for (int64_t m = 0; m < g; ++m) loader_.fill(m, micro_[size_t(m)].tokens, micro_[size_t(m)].targets);
    Pipeline::Hooks hooks;
    bool last_backward = false;
    if (dp_) {
      hooks.before_backward = [&](int, int, bool last) {
        last_backward = last;
        dp_->before_backward(last);
      };
      // Reductions the backward deferred (no overlap: GPU ranks with pp, MPI) run after it,
      // but the last micro-batch's wait for finish_gradients below: run here, inside the
      // pipeline's compute item, they would hold up the input gradient this stage sends
      // upstream, and each stage's would add to the drain of the stages before it.
      hooks.after_backward = [&](int) {
        if (!last_backward) dp_->after_backward();
      };
    }
    pipe_losses = pipe_->step(micro_, scales, hooks);
  } else {
    for (int64_t m = 0; m < g; ++m) {
      loader_.fill(m, tokens_, targets_);
      be.copy(model_.forward_loss(tokens_, targets_), stats_dev_.slice(0, m, m + 1));
      if (dp_) dp_->before_backward(m == g - 1);
      model_.backward(scales[size_t(m)]);
      if (dp_) dp_->after_backward();
    }
  }
  loader_.advance();
  if (dp_) dp_->finish_gradients();
  if (tied_) {
    sum_tied_shards();
  } else if (pipe_ && !pipe_tied_by_trainer_) {
    pipe_->sum_tied_gradients();  // after the data-parallel sums (ZeRO 0 and 1: whole gradients)
  }
  if (model_.sequence_parallel()) sum_norm_gradients();
  std::vector<Tensor> grads;
  const bool replicas = std::any_of(model_.layout().begin(), model_.layout().end(),
                                    [](const ParamSpec& p) { return p.replica; });
  if (dp_ && dp_->zero_stage() >= 2) {
    const auto [lo, hi] = dp_->shard(model_.parameter_count());
    const Tensor shard = dp_->gradient_shard();  // this rank's share of the norm; summed below
    if (!replicas) {
      grads.push_back(shard);
    } else {  // without the part of a replica (the tied wte's copy: the first stage counts it)
      for (const ParamSpec& p : model_.layout()) {
        const int64_t a = std::max(lo, p.offset), b = std::min(hi, p.offset + p.numel());
        if (a < b && !p.replica) grads.push_back(shard.slice(0, a - lo, b - lo));
      }
    }
  } else {  // a stage's replica (the tied embedding's copy) is the first stage's to count
    for (size_t i = 0; i < model_.gradients().size(); ++i) {
      if (!model_.layout()[i].replica) grads.push_back(model_.gradients()[i].tensor);
    }
  }
  // Tensor parallelism: the split tensors' squares are summed over the group, the whole ones
  // (norms, row-parallel biases: the same gradient on every rank) counted once.
  const TensorParallelRank tp = model_.tensor_parallel();
  std::vector<Tensor> whole;
  if (tp.size > 1) split_gradients(grads, whole);
  be.global_norm(grads, stats_dev_.slice(0, g, g + 1));
  if (tp.size > 1) be.global_norm(whole, stats_dev_.slice(0, g + 1, g + 2));
  Tensor stats = Tensor::empty({stats_dev_.numel()}, DType::f32);
  if (tp.size > 1) model_.tensor_parallel_hooks()->wait();  // with the timeout: never a hang
  be.copy(stats_dev_, stats);  // the step's one wait for the device before the update
  // Every micro-batch's loss in global order (rank-major, as the sampler slices the batch),
  // summed in that order: the same number one process would report.
  std::vector<float> losses(stats.data<float>(), stats.data<float>() + g);
  if (pipe_) losses = pipe_losses;
  if (dp_) losses = dp_->gather(losses);
  double loss_sum = 0;
  if (shares.empty()) {
    for (float l : losses) loss_sum += l;
    s.loss = float(loss_sum / double(losses.size()));
  } else {
    for (size_t j = 0; j < losses.size(); ++j) loss_sum += shares[j] * double(losses[j]);
    s.loss = float(loss_sum);
  }
  s.grad_norm = stats.data<float>()[g];
  if (dp_ && dp_->zero_stage() >= 2) s.grad_norm = dp_->global_norm(s.grad_norm);
  if (tp.size > 1) {
    float whole_norm = stats.data<float>()[g + 1];
    if (dp_ && dp_->zero_stage() >= 2) whole_norm = dp_->global_norm(whole_norm);
    const double split = model_.tensor_parallel_hooks()->norm_over_group(s.grad_norm);
    s.grad_norm = float(std::hypot(split, double(whole_norm)));
  }
  if (pp_) {  // each stage's parameters are its own: the squares summed over the stages
    s.grad_norm = float(norm_over_ranks(*pp_, s.grad_norm));
  }
  s.step = ++step_;
  const auto nothing = [](double share) { return share == 0; };
  if (!shares.empty() && std::all_of(shares.begin(), shares.end(), nothing)) {
    // Every rank has the same shares (of the whole global batch), so all skip the update alike.
    s.untrained = true;
    s.loss = std::numeric_limits<float>::quiet_NaN();
    NURI_LOG(info, "step ", s.step, ": the global batch has no trained target (its loss mask "
             "covers all of it): no update");
  } else if (!std::isfinite(s.loss) || !std::isfinite(s.grad_norm)) {
    if (cfg_.on_nonfinite != NonFinitePolicy::skip) {  // every rank stops here, alike
      throw DivergedError(
          detail::concat("non-finite ", std::isfinite(s.loss) ? "gradient norm" : "loss",
                         " at step ", s.step, " (loss ", s.loss, ", grad norm ", s.grad_norm,
                         "); stopping as on_nonfinite=stop asks. Lower the learning rate, or "
                         "use on_nonfinite=skip to drop such steps"),
          __FILE__, __LINE__);
    }
    s.skipped = true;
    ++skipped_;
    ++skipped_in_a_row_;
    NURI_LOG(warn, "step ", s.step, ": non-finite loss or gradient norm (loss ", s.loss,
             ", norm ", s.grad_norm, "): update skipped (", skipped_, " so far)");
    if (cfg_.skip_limit > 0 && skipped_in_a_row_ >= cfg_.skip_limit) {
      // The last update before the streak is the likely cause: resume from before it. (Steps
      // with no trained target in the streak neither update nor break it.)
      const int64_t last_update = last_update_;
      const int64_t streak = s.step - last_update;
      throw DivergedError(
          detail::concat(skipped_in_a_row_, " steps in a row (", last_update + 1, " to ", s.step,
                         streak > skipped_in_a_row_
                             ? ", " + std::to_string(streak - skipped_in_a_row_) +
                                   " of them with no trained target"
                             : std::string(),
                         ") had a non-finite loss or gradient norm: the run has diverged "
                         "(train.skip_limit = ", cfg_.skip_limit,
                         "). Lower the learning rate (train.lr = ", cfg_.lr, ") and ",
                         last_update > 1 ? "resume from a checkpoint of step " +
                                               std::to_string(last_update - 1) +
                                               " or earlier (step " +
                                               std::to_string(last_update) +
                                               "'s update, the last one made, may be what "
                                               "diverged)"
                                         : std::string("start again")),
          __FILE__, __LINE__);
    }
  } else {
    skipped_in_a_row_ = 0;
    last_update_ = s.step;
    opt_->step(s.lr, clip_coefficient(s.grad_norm, cfg_.grad_clip));
    if (dp_ && dp_->zero_stage() >= 1) dp_->gather_parameters(model_);
  }
  model_.backend().synchronize();
  s.step_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  s.tokens_per_second =
      double(cfg_.micro_batch * cfg_.seq_len * cfg_.grad_accum * world) / s.step_seconds;
  s.peak_bytes = model_.memory().peak_bytes;
  return s;
}

// ---- checkpoints ---------------------------------------------------------------------------------

namespace {

// A struct's settings as a JSON object (its table, nuri/core/settings.h).
nlohmann::ordered_json settings_json(const Settings& table, const void* obj) {
  return nlohmann::ordered_json::parse(settings_to_json(Schema{{"", "", table}}, obj, -1));
}

// Reads piece `q` of logical tensor `name` from `source` (a CheckpointReader or a
// SafetensorsFile: read_range(name, lo, hi, dst)), a block row by row; `base`: the tensor's first
// element in what is read (a flat moment buffer: the parameter's offset in the logical layout).
template <class Source>
void read_piece(const Source& source, const std::string& name, const Piece& q, int64_t base,
                const Tensor& dst) {
  if (q.rows == 0) {
    source.read_range(name, base + q.logical, base + q.logical + q.n, dst);
    return;
  }
  const int64_t cols = q.n / q.rows, width = q.p->logical[1];
  for (int64_t i = 0; i < q.rows; ++i) {
    const int64_t first = base + q.logical + i * width;
    source.read_range(name, first, first + cols, dst.slice(0, i * cols, (i + 1) * cols));
  }
}

}  // namespace

struct Trainer::PendingSave {
  std::unique_ptr<CheckpointWriter> writer;
  std::thread thread;
  std::atomic<bool> written{false};
  int keep_last = 3;
};

Trainer::~Trainer() {
  // A save still being written is finished (its files), not committed: committing is
  // collective, which a destructor must not be. finish_checkpoint() commits.
  if (pending_ && pending_->thread.joinable()) pending_->thread.join();
  // The model outlives this trainer: no pointer to its tensor-parallel collectives stays
  // (DataParallel's destructor detaches its own hooks likewise).
  if (tp_ && model_.tensor_parallel_hooks() == tp_.get()) model_.set_tensor_parallel_hooks(nullptr);
}

std::string Trainer::save_checkpoint(const std::string& root, int keep_last) {
  finish_checkpoint();
  return snapshot(root)->commit(keep_last);
}

std::string Trainer::save_checkpoint_async(const std::string& root, int keep_last) {
  finish_checkpoint();
  auto p = std::make_unique<PendingSave>();
  p->writer = snapshot(root);
  p->keep_last = keep_last;
  const std::string dir = p->writer->directory();
  p->thread = std::thread([w = p->writer.get(), done = &p->written] {
    w->write_files();  // keeps its own errors for publish()
    done->store(true);
  });
  pending_ = std::move(p);
  return dir;
}

std::string Trainer::finish_checkpoint() { return poll_checkpoint(/*wait=*/true); }

std::string Trainer::poll_checkpoint(bool wait) {
  if (!pending_) return "";
  bool ready = pending_->written.load();
  if (wait) {
    pending_->thread.join();
    ready = true;
  } else if (Communicator* all = all_ranks(); all && all->size() > 1) {
    // every rank must have written its files
    Tensor flag = Tensor::empty({1}, DType::f32);
    flag.data<float>()[0] = ready ? 1.f : 0.f;
    all->all_reduce(flag, ReduceOp::sum);
    ready = flag.data<float>()[0] == float(all->size());
  }
  if (!ready) return "";
  if (pending_->thread.joinable()) pending_->thread.join();
  std::unique_ptr<PendingSave> p = std::move(pending_);
  return p->writer->publish(p->keep_last);
}

std::unique_ptr<CheckpointWriter> Trainer::snapshot(const std::string& root) {
  Backend& be = model_.backend();
  const int64_t world = dp_ ? dp_->world() : 1, rank = dp_ ? dp_->rank() : 0;
  auto wp = std::make_unique<CheckpointWriter>(root, step_, all_ranks());
  CheckpointWriter& w = *wp;
  // Every rank writes its shard [lo, hi) of the flat layout (the ZeRO shard, also where every
  // rank holds everything): its slices of each parameter (f32 masters) and of AdamW's moments.
  // Nothing is gathered: no rank holds the whole model for a checkpoint. Under tensor
  // parallelism the slices are pieces of the logical tensors (a column-parallel slice as one
  // block), and the tensors every rank holds whole are written by tp rank 0 alone.
  const int64_t total = model_.parameter_count();
  const auto [lo, hi] = DataParallel::shard_of(total, int(world), int(rank));
  Tensor masters = Tensor::empty({hi - lo}, DType::f32);
  be.copy(model_.param_buffer().slice(0, lo - model_.master_begin(), hi - model_.master_begin()),
          masters);
  const TensorParallelRank tp = model_.tensor_parallel();
  // (Structured bindings are captured through init-captures: clang cannot capture them directly
  // in a translation unit built with OpenMP.)
  auto add = [&, lo = lo](const std::string& name, const Piece& q, const Tensor& flat_lo) {
    const ParamSpec& p = *q.p;
    if (!p.split() && tp.rank != 0) return;  // written once, by tp rank 0
    if (p.replica) return;                   // the first pipeline stage's copy is written
    const Tensor data = flat_lo.slice(0, q.flat - lo, q.flat - lo + q.n);
    if (q.rows > 0) {
      w.add_block(name, p.logical, q.logical / p.logical[1], q.logical % p.logical[1],
                  data.view({q.rows, q.n / q.rows}));
    } else {
      w.add_range(name, p.logical_numel(), q.logical, data, p.logical);
    }
  };
  for_each_piece(model_.layout(), lo, hi, [&](const Piece& q) { add(q.p->name, q, masters); });
  for (const auto& [name, buf] : {std::pair{"adamw.m", &opt_->m_buffer()},
                                  std::pair{"adamw.v", &opt_->v_buffer()}}) {
    // The optimizer holds [shard_begin, shard_end): the shard, or everything (ZeRO 0).
    const int64_t from = lo - opt_->shard_begin(), to = hi - opt_->shard_begin();
    Tensor host = Tensor::empty({hi - lo}, DType::f32);
    be.copy(buf->view({buf->numel()}).slice(0, from, to), host);
    if (tp.size == 1 && !pipe_) {  // one flat tensor over the layout (the logical one)
      w.add_range(name, total, lo, host);
    } else {  // per parameter, as its logical tensor's pieces
      for_each_piece(model_.layout(), lo, hi,
                     [&, name = name](const Piece& q) {
                       add(std::string(name) + "/" + q.p->name, q, host);
                     });
    }
  }
  nlohmann::ordered_json meta;
  meta["model"] = settings_json(model_settings(), &model_.config());
  const DataPosition pos = loader_.position();
  meta["data"] = {{"epoch", pos.epoch},
                  {"batch", pos.batch},
                  {"seq_len", cfg_.seq_len},
                  {"global_batch", cfg_.micro_batch * cfg_.grad_accum * world},
                  {"seed", cfg_.seed},
                  {"tokens", loader_.sampler().tokens().size()},
                  {"fingerprint", data_fingerprint()}};
  meta["step"] = step_;
  meta["skipped_steps"] = skipped_;
  meta["skipped_in_a_row"] = skipped_in_a_row_;  // a streak goes on across a preemption
  meta["last_update"] = last_update_;
  meta["adamw"] = {{"steps_done", opt_->steps_done()},
                   {"beta1", cfg_.beta1},
                   {"beta2", cfg_.beta2},
                   {"eps", cfg_.eps},
                   {"weight_decay", cfg_.weight_decay}};
  meta["train"] = settings_json(train_settings(), &cfg_);
  meta["parallel"] = {{"world_size", world},
                      {"zero_stage", dp_ ? dp_->zero_stage() : 0},
                      {"tp", tp.size},
                      {"pp", grid_.pp()}};
  meta["backend"] = be.name();
  w.set_meta(meta.dump());
  be.synchronize();  // the host copies are complete before training goes on
  return wp;
}

void Trainer::save_model(const std::string& path,
                         const std::map<std::string, std::string>& metadata) {
  finish_checkpoint();
  // Rank 0 assembles one tensor at a time from the ranks that hold its pieces: with sharded
  // masters every dp rank its shard's, else dp rank 0; tensor parallelism's slices from every
  // tp rank, the tensors every tp rank holds whole from tp rank 0; each tensor from the
  // pipeline stage that holds it (a tied embedding from the first).
  Communicator* host = all_ranks();
  const int me = host ? host->rank() : 0, world = host ? host->size() : 1;
  const ProcessGrid grid = world_ ? grid_ : ProcessGrid(world, world);
  const bool sharded = model_.masters_sharded();
  const ModelConfig& cfg = model_.config();
  Backend& be = model_.backend();
  // Every (tp, pp) index's layout, and where each logical tensor is in it (-1: not held, or a
  // replica that the first stage's copy stands for).
  const std::vector<ParamSpec> logical = param_layout(cfg);
  std::vector<std::vector<ParamSpec>> layouts;  // by pp · tp() + tp
  std::vector<std::vector<int>> where;
  for (int s = 0; s < grid.pp(); ++s) {
    for (int q = 0; q < grid.tp(); ++q) {
      layouts.push_back(param_layout(cfg, {q, grid.tp()}, stages_[size_t(s)]));
      std::map<std::string, int> at;
      for (size_t j = 0; j < layouts.back().size(); ++j) {
        if (!layouts.back()[j].replica) at[layouts.back()[j].name] = int(j);
      }
      where.emplace_back();
      for (const ParamSpec& p : logical) where.back().push_back(at.count(p.name) ? at[p.name] : -1);
    }
  }
  auto layout_of = [&](const GridCoord& c) { return size_t(c.pp * grid.tp() + c.tp); };
  // The flat range of tensor i that rank w sends ([0, 0): nothing).
  auto sends = [&](int w, size_t i) -> std::pair<int64_t, int64_t> {
    const GridCoord c = grid.coord(w);
    const std::vector<ParamSpec>& l = layouts[layout_of(c)];
    if (where[layout_of(c)][i] < 0) return {0, 0};
    const ParamSpec& p = l[size_t(where[layout_of(c)][i])];
    if (!p.split() && c.tp != 0) return {0, 0};
    if (!sharded && c.dp != 0) return {0, 0};
    const int64_t total = l.back().offset + l.back().numel();
    const auto [lo, hi] = sharded ? DataParallel::shard_of(total, grid.dp(), c.dp)
                                  : std::pair<int64_t, int64_t>{0, total};
    const int64_t a = std::max(lo, p.offset), b = std::min(hi, p.offset + p.numel());
    return a < b ? std::pair{a, b} : std::pair<int64_t, int64_t>{0, 0};
  };
  // The tensors go in name order, the order of the file's tensor checksum.
  std::vector<size_t> order(logical.size());
  std::iota(order.begin(), order.end(), size_t(0));
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return logical[a].name < logical[b].name; });
  std::unique_ptr<SafetensorsStreamWriter> out;
  const std::string tmp = path + ".tmp";
  if (me == 0) {
    std::vector<SafetensorsPlanned> planned;
    for (size_t i : order) planned.push_back({logical[i].name, DType::f32, logical[i].logical});
    out = std::make_unique<SafetensorsStreamWriter>(tmp, std::move(planned), metadata,
                                                    /*checksum=*/true);
  }
  for (size_t i : order) {
    const auto [a, b] = sends(me, i);
    Tensor mine;
    if (a < b) {
      mine = Tensor::empty({b - a}, DType::f32);
      be.copy(model_.param_buffer().slice(0, a - model_.master_begin(), b - model_.master_begin()),
              mine);
      if (me != 0) host->send(mine, 0);
    }
    if (me != 0) continue;
    Tensor whole = Tensor::empty(logical[i].logical, DType::f32);
    float* dst = whole.data<float>();
    for (int w = 0; w < world; ++w) {
      const auto [wa, wb] = sends(w, i);
      if (wa >= wb) continue;
      Tensor part = mine;
      if (w != 0) {
        part = Tensor::empty({wb - wa}, DType::f32);
        host->recv(part, w);
      }
      const size_t lw = layout_of(grid.coord(w));
      const ParamSpec& p = layouts[lw][size_t(where[lw][i])];
      for_each_piece({p}, wa, wb, [&, wa = wa](const Piece& q) {
        const float* src = part.data<float>() + (q.flat - wa);
        const int64_t rows = q.rows > 0 ? q.rows : 1, cols = q.n / rows;
        const int64_t stride = q.rows > 0 ? p.logical[1] : 0;
        for (int64_t r = 0; r < rows; ++r) {
          std::copy(src + r * cols, src + (r + 1) * cols, dst + q.logical + r * stride);
        }
      });
    }
    out->write(logical[i].name, whole);
  }
  if (me == 0) {
    out->close();
    std::filesystem::rename(tmp, path);
  }
}

Tensor Trainer::master_weights() {
  if (dp_) return dp_->gather_master_weights(model_);
  Tensor all = Tensor::empty({model_.parameter_count()}, DType::f32);
  model_.backend().copy(model_.param_buffer(), all);
  return all;
}

namespace {
/// Throws unless the data a checkpoint's meta records (its `data` object) is `data`: the token
/// count and the fingerprint. Checkpoints of before the data was recorded have neither field.
void check_data_record(const nlohmann::json& d, const std::string& dir, const TokenFile& data,
                       const std::string& fingerprint) {
  if (!d.contains("fingerprint")) return;
  const int64_t saved_tokens = json_checked::integer(d.at("tokens"));
  const std::string saved_print = d.at("fingerprint").get<std::string>();
  NURI_CHECK(saved_tokens == data.size() && saved_print == fingerprint, "checkpoint ", dir,
             " was saved training on other data: ", saved_tokens, " tokens, fingerprint ",
             saved_print, "; this run's training data (", data.path(), ") has ", data.size(),
             " tokens, fingerprint ", fingerprint,
             ". Resume with the data the checkpoint trained on (its sample order and the "
             "position in it are that data's), start afresh in another checkpoint directory, "
             "or, to go on with this data at the saved position on purpose, resume with "
             "checkpoint.check_data false (--no-check-data; from Python, "
             "load_checkpoint(path, check_data=False))");
}
}  // namespace

void Trainer::check_checkpoint_data(const std::string& path) const {
  CheckpointReader r(path);
  try {
    check_data_record(nlohmann::json::parse(r.meta()).at("data"), r.dir(),
                      loader_.sampler().tokens(), data_fingerprint());
  } catch (const nlohmann::json::exception& e) {
    NURI_CHECK(false, "checkpoint ", r.dir(), ": its meta data lacks a field or has one of the "
               "wrong type: ", e.what());
  }
}

const std::string& Trainer::data_fingerprint() const {
  if (data_fingerprint_.empty()) data_fingerprint_ = loader_.sampler().tokens().fingerprint();
  return data_fingerprint_;
}

// ZeRO 3's units kept gathered (keep_gathered: an evaluation or a skipped update leaves them)
// hold the weights of before a load; the next forward must gather the loaded ones.
void Trainer::weights_replaced() {
  if (dp_ && dp_->zero_stage() == 3) dp_->gather_parameters(model_);
}

std::string Trainer::load_checkpoint(const std::string& path, bool check_data) {
  finish_checkpoint();
  CheckpointReader r(path);
  const std::string& dir = r.dir();
  nlohmann::json meta;
  int64_t saved_step = 0, saved_steps_done = 0, saved_skipped = 0, saved_in_a_row = 0;
  int64_t saved_last_update = -1;
  DataPosition saved_position;
  try {
    meta = nlohmann::json::parse(r.meta());
    // The sequence length first: a run from a RoPE model file grows max_seq_len to it
    // (checkpoint.init), so another seq_len is what differs, not the model.
    const nlohmann::json& d = meta.at("data");
    NURI_CHECK(json_checked::integer(d.at("seq_len")) == cfg_.seq_len, "checkpoint ", dir,
               " trained on sequences of ", d["seq_len"].dump(), " tokens; this run's "
               "seq_len is ", cfg_.seq_len, ". Give train.seq_len ", d["seq_len"].dump(),
               " to resume it, or start afresh in another checkpoint directory");
    // The model must be the checkpoint's, field by field.
    for (const auto& m : model_config_differences(meta.at("model").dump(), model_.config())) {
      NURI_CHECK(!m.recorded.empty(), "checkpoint ", dir, " does not record the model's ", m.key);
      NURI_CHECK(false, "checkpoint ", dir, " was saved from a model with ", m.key, "=",
                 m.recorded, "; this run's model has ", m.key, "=", m.mine,
                 ". Build the model from the checkpoint's config to resume it");
    }
    // What fixes the global sample order must be the checkpoint's too.
    const int64_t world = dp_ ? dp_->world() : 1;
    NURI_CHECK(d.at("seed").is_number_integer() && d["seed"].get<uint64_t>() == cfg_.seed,
               "checkpoint ", dir, " used data seed ", d["seed"].dump(), "; this run's seed is ",
               cfg_.seed,
               " (the sample order depends on it). Give train.seed ", d["seed"].dump(),
               " to resume it, or start afresh in another checkpoint directory");
    const int64_t gb = cfg_.micro_batch * cfg_.grad_accum * world;
    NURI_CHECK(json_checked::integer(d.at("global_batch")) == gb, "checkpoint ", dir,
               " used a global batch of ", d["global_batch"].dump(), " sequences; this "
               "run's is ", gb,
               cfg_.global_batch > 0
                   ? std::string(" (train.global_batch). Set train.global_batch (--global-batch)"
                                 " to ") + d["global_batch"].dump()
                   : detail::concat(" (micro_batch ", cfg_.micro_batch, " x grad_accum ",
                                    cfg_.grad_accum, " x ", world, " ranks). Choose "
                                    "micro_batch and grad_accum so the product is the "
                                    "checkpoint's, or set train.global_batch (--global-batch) "
                                    "to ", d["global_batch"].dump(), ", which derives "
                                    "grad_accum on any number of ranks"));
    // And the data: the sample order and the position in it are this data's.
    if (check_data) check_data_record(d, dir, loader_.sampler().tokens(), data_fingerprint());
    // Where training stands, read (and checked) before any weight is.
    saved_step = json_checked::integer(meta.at("step"));
    saved_steps_done = json_checked::integer(meta.at("adamw").at("steps_done"));
    saved_position = {json_checked::integer(d.at("epoch")), json_checked::integer(d.at("batch"))};
    // Other data (check_data false) may have fewer batches an epoch than the position.
    const int64_t per_epoch = loader_.sampler().batches_per_epoch();
    if (saved_position.batch >= per_epoch) {
      NURI_LOG(warn, "checkpoint ", dir, " stopped at batch ", saved_position.batch,
               " of epoch ", saved_position.epoch, "; this data has ", per_epoch,
               " batches an epoch, so training goes on at the start of epoch ",
               saved_position.epoch + 1);
      saved_position = {saved_position.epoch + 1, 0};
    }
    if (meta.contains("skipped_steps")) {
      saved_skipped = json_checked::integer(meta["skipped_steps"]);
    }
    if (meta.contains("skipped_in_a_row")) {  // checkpoints of before it: 0
      saved_in_a_row = json_checked::integer(meta["skipped_in_a_row"]);
    }
    if (meta.contains("last_update")) {  // checkpoints of before it: the step less the streak
      saved_last_update = json_checked::integer(meta["last_update"]);
    }
  } catch (const nlohmann::json::exception& e) {
    NURI_CHECK(false, "checkpoint ", dir, ": its meta data lacks a field or has one of the "
               "wrong type: ", e.what());
  }
  // Parameters: exactly the model's names, with the model's logical shapes; only the slices of
  // the range this rank holds (its ZeRO 3 shard, its tensor-parallel slices; everything where it
  // holds a whole copy) are read.
  Backend& be = model_.backend();
  const std::vector<ParamSpec>& layout = model_.layout();
  for (const ParamSpec& p : layout) {
    NURI_CHECK(r.has_range(p.name), "checkpoint ", dir, ": tensor '", p.name, "' is missing");
    NURI_CHECK(r.range_shape(p.name) == p.logical, "checkpoint ", dir, ": tensor '", p.name,
               "' has shape ", shape_str(r.range_shape(p.name)), ", the model's is ",
               shape_str(p.logical));
  }
  const bool flat_moments = r.has_range("adamw.m");  // else one tensor per parameter
  const std::vector<ParamSpec> whole_layout = param_layout(model_.config());  // every stage's
  for (const std::string& n : r.range_names()) {
    std::string param = n;
    if (n.rfind("adamw.m/", 0) == 0 || n.rfind("adamw.v/", 0) == 0) param = n.substr(8);
    const bool known = n == "adamw.m" || n == "adamw.v" ||
                       std::any_of(whole_layout.begin(), whole_layout.end(),
                                   [&](const ParamSpec& p) { return p.name == param; });
    NURI_CHECK(known, "checkpoint ", dir, ": tensor '", n, "' is not a parameter of this model "
               "(an extra tensor: was it saved from another model?)");
  }
  auto read = [&](const std::string& name, const Piece& q, int64_t base, const Tensor& dst) {
    read_piece(r, name, q, base, dst);
  };
  // AdamW's moments: this layout's range of the flat buffers, from whichever files hold it.
  std::map<std::string, int64_t> logical_offset;  // each parameter's place in the tp = 1 layout
  int64_t logical_total = 0;
  for (const ParamSpec& p : whole_layout) {
    logical_offset[p.name] = p.offset;
    logical_total += p.numel();
  }
  const int64_t opt_lo = opt_->shard_begin(), opt_hi = opt_->shard_end();
  // Everything the load reads is checked to be there before anything of this trainer changes,
  // so a load that fails (from Python, say) leaves the weights, moments and counters as they
  // were; the moments come from the files the weights' reads opened and checksummed.
  for (const char* name : {"adamw.m", "adamw.v"}) {
    if (flat_moments) {
      NURI_CHECK(r.has_range(name), "checkpoint ", dir, ": AdamW state '", name, "' is missing");
      NURI_CHECK(r.range_numel(name) == logical_total, "checkpoint ", dir, ": '", name, "' has ",
                 r.range_numel(name), " elements, the model ", logical_total, " parameters");
    } else {
      for_each_piece(layout, opt_lo, opt_hi, [&](const Piece& q) {
        const std::string tensor = std::string(name) + "/" + q.p->name;
        NURI_CHECK(r.has_range(tensor), "checkpoint ", dir, ": AdamW state '", tensor,
                   "' is missing");
      });
    }
  }
  const auto [held_lo, held_hi] = model_.held_range();
  {
    Tensor held = Tensor::empty({held_hi - held_lo}, DType::f32);
    for_each_piece(layout, held_lo, held_hi, [&, held_lo = held_lo](const Piece& q) {
      read(q.p->name, q, 0, held.slice(0, q.flat - held_lo, q.flat - held_lo + q.n));
    });
    model_.load_held_weights(held);
  }
  weights_replaced();
  for (const auto& [name, buf] : {std::pair{"adamw.m", &opt_->m_buffer()},
                                  std::pair{"adamw.v", &opt_->v_buffer()}}) {
    Tensor host = Tensor::empty({opt_hi - opt_lo}, DType::f32);
    if (flat_moments && model_.tensor_parallel().size == 1 && model_.first_stage() &&
        model_.last_stage()) {
      r.read_range(name, opt_lo, opt_hi, host);  // the layouts are the same: one read
    } else {
      for_each_piece(layout, opt_lo, opt_hi, [&, name = name](const Piece& q) {
        const Tensor dst = host.slice(0, q.flat - opt_lo, q.flat - opt_lo + q.n);
        if (flat_moments) {
          read(name, q, logical_offset.at(q.p->name), dst);
        } else {
          read(std::string(name) + "/" + q.p->name, q, 0, dst);
        }
      });
    }
    be.copy(host, buf->view({buf->numel()}));
  }
  opt_->set_steps_done(saved_steps_done);
  step_ = saved_step;
  skipped_ = saved_skipped;
  skipped_in_a_row_ = saved_in_a_row;
  last_update_ = saved_last_update >= 0 ? saved_last_update : saved_step - saved_in_a_row;
  loader_.set_position(saved_position);
  be.synchronize();
  return dir;
}

void Trainer::load_model_file(const std::string& path) {
  finish_checkpoint();
  NURI_CHECK(!std::filesystem::is_directory(path), path, " is a directory, not a model file. A "
             "Hugging Face model directory becomes one with `python -m nuri import DIR --out "
             "FILE`");
  const SafetensorsFile f(path);
  const auto meta = f.metadata().find("nuri_model_config");
  if (meta != f.metadata().end()) {  // the model must be the file's, field by field
    nlohmann::json theirs;
    try {
      theirs = json_checked::parse(meta->second);
    } catch (const nlohmann::json::exception& e) {
      NURI_CHECK(false, path, ": its nuri_model_config metadata is not JSON (", e.what(), ")");
    }
    NURI_CHECK(theirs.is_object(), path, ": its nuri_model_config metadata is not an object");
    for (const auto& d : model_config_differences(meta->second, model_.config())) {
      const bool rope = model_.config().position == PositionKind::rope;
      if (rope && context_setting(d.key)) continue;  // a longer context, other RoPE frequencies
      NURI_CHECK(false, path, " holds a model with ", d.key, "=",
                 d.recorded.empty() ? std::string("(not recorded)") : d.recorded,
                 "; this model has ", d.key, "=", d.mine);
    }
  }
  const std::vector<ParamSpec>& layout = model_.layout();
  const std::vector<ParamSpec> whole_layout = param_layout(model_.config());
  for (const ParamSpec& p : whole_layout) {
    NURI_CHECK(f.contains(p.name), path, ": tensor '", p.name, "' is missing",
               meta == f.metadata().end()
                   ? " (it records no nuri model config: a Hugging Face weights file? `python -m "
                     "nuri import DIR --out FILE` writes its model directory as a nuri model file)"
                   : "");
    NURI_CHECK(f.entry(p.name).shape == p.logical, path, ": tensor '", p.name, "' has shape ",
               shape_str(f.entry(p.name).shape), ", the model's is ", shape_str(p.logical));
  }
  for (const std::string& n : f.names()) {
    NURI_CHECK(std::any_of(whole_layout.begin(), whole_layout.end(),
                           [&](const ParamSpec& p) { return p.name == n; }),
               path, ": tensor '", n, "' is not a parameter of this model (", whole_layout.size(),
               " are)");
  }
  const auto sum = f.metadata().find(kTensorsChecksumKey);
  if (sum != f.metadata().end()) {
    NURI_CHECK(tensors_checksum(f) == sum->second, path, " fails its checksum: its tensors are "
               "not the ones nuri wrote (the file was damaged or changed since); write it again, "
               "or export it from a checkpoint");
  }
  const auto [lo, hi] = model_.held_range();
  Tensor held = Tensor::empty({hi - lo}, DType::f32);
  for_each_piece(layout, lo, hi, [&, lo = lo](const Piece& q) {
    read_piece(f, q.p->name, q, 0, held.slice(0, q.flat - lo, q.flat - lo + q.n));
  });
  const float* w = held.data<float>();
  for (int64_t i = 0; i < held.numel(); ++i) {
    NURI_CHECK(std::isfinite(w[i]), path, ": weight ", lo + i, " of the model's flat layout is ",
               w[i], " (not finite): a model saved from a run that diverged, or a damaged file");
  }
  model_.load_held_weights(held);
  weights_replaced();
  model_.backend().synchronize();
}

std::unique_ptr<DataLoader> validation_loader(std::shared_ptr<TokenFile> val,
                                              const TrainConfig& cfg, int64_t dp, int64_t rank) {
  try {
    return std::make_unique<DataLoader>(std::move(val), cfg.seq_len, cfg.micro_batch,
                                        cfg.grad_accum, dp, rank, cfg.seed, /*shuffle=*/false);
  } catch (const Error& e) {  // validation data shorter than one global batch
    throw ConfigError(detail::concat("validation data: ", e.what(), " (a validation batch is a "
                                     "global batch: micro_batch ", cfg.micro_batch,
                                     " x grad_accum ", cfg.grad_accum, " x ", dp, " ranks)"));
  }
}

float Trainer::evaluate() {
  NURI_CHECK(val_ != nullptr, "evaluate() needs validation data");
  // Validation batches are the first eval_batches global batches (micro_batch · grad_accum ·
  // ranks sequences each) in file order; data-parallel ranks each take their slice, in
  // micro-batches, and the mean is over every micro-batch's loss, so any layout with the same
  // global batch evaluates the same sequences.
  const int64_t world = dp_ ? dp_->world() : 1, rank = dp_ ? dp_->rank() : 0;
  const int64_t g = cfg_.grad_accum;
  const std::unique_ptr<DataLoader> loader = validation_loader(val_, cfg_, world, rank);
  DataLoader& val = *loader;
  const int64_t n = std::min(cfg_.eval_batches, val.sampler().batches_per_epoch());
  std::vector<float> losses;  // micro-batch k of batch i at i · g + k
  if (pipe_) {  // the micro-batches through the stages, forwards only
    std::vector<Pipeline::MicroBatch> batches;
    for (int64_t i = 0; i < n; ++i, val.advance()) {
      for (int64_t k = 0; k < g; ++k) {
        batches.push_back({Tensor::empty({cfg_.micro_batch, cfg_.seq_len}, DType::i32),
                           Tensor::empty({cfg_.micro_batch, cfg_.seq_len}, DType::i32)});
        val.fill(k, batches.back().tokens, batches.back().targets);
      }
    }
    losses = pipe_->forward_only(batches);
  } else {
    for (int64_t i = 0; i < n; ++i, val.advance()) {
      for (int64_t k = 0; k < g; ++k) {
        val.fill(k, tokens_, targets_);
        losses.push_back(model_.forward(tokens_, targets_));
      }
    }
  }
  if (dp_) losses = dp_->gather(losses);  // rank-major: rank r's at r · n · g
  double sum = 0;
  if (!val.sampler().masked()) {
    for (float l : losses) sum += l;
    return float(sum / double(losses.size()));
  }
  // A loss mask: each micro-batch's mean weighted by its counted targets (as in step()).
  double counted = 0;
  DataPosition pos;
  for (int64_t i = 0; i < n; ++i, pos = val.sampler().next(pos)) {
    for (int64_t r = 0; r < world; ++r) {
      for (int64_t k = 0; k < g; ++k) {
        const double c = double(val.sampler().trained_targets(
            pos, (r * g + k) * cfg_.micro_batch, cfg_.micro_batch));
        if (c == 0) continue;  // no target counts: its mean is not a number
        sum += c * double(losses[size_t((r * n + i) * g + k)]);
        counted += c;
      }
    }
  }
  return counted > 0 ? float(sum / counted) : std::numeric_limits<float>::quiet_NaN();
}

namespace {

// What a generate() samples with: the logits at position len - 1 of the window `tokens` [1,
// window] (f32, host, [padded_vocab]; the same on every rank that samples).
using LogitsRow = std::function<Tensor(const Tensor& tokens, int64_t len)>;

// The sampling loop of both generate()s: the window, the draws and the checks.
std::vector<int32_t> sample(const ModelConfig& cfg, const std::vector<int32_t>& prompt,
                            const SampleOptions& opt, const LogitsRow& logits_row) {
  NURI_CHECK(!prompt.empty(), "generate: the prompt needs at least one token");
  NURI_CHECK(opt.temperature >= 0, "generate: temperature (", opt.temperature, ") must be >= 0");
  // (bounded: the prompt's length plus it must not overflow, and each token is a forward)
  NURI_CHECK(opt.max_new_tokens >= 0 && opt.max_new_tokens <= kMaxNewTokens,
             "generate: max_new_tokens (", opt.max_new_tokens, ") must be in [0, ",
             kMaxNewTokens, "]");
  NURI_CHECK(opt.top_k >= 0, "generate: top_k (", opt.top_k,
             ") must be >= 0 (0: the whole vocabulary)");
  NURI_CHECK(opt.top_p > 0 && opt.top_p <= 1, "generate: top_p (", opt.top_p,
             ") must be in (0, 1] (1: no nucleus cut)");
  for (const int32_t s : opt.stop) {
    NURI_CHECK(s >= 0 && s < cfg.vocab_size, "generate: stop token ", s,
               " is not a token id of the model (an integer in [0, ", cfg.vocab_size, "))");
  }
  // A fixed window: positions after the current one are filler that causal attention never lets
  // earlier positions see, so the activation plan is made once.
  // A sliding-window model's sequences stay within its window (check_sliding_window).
  const int64_t longest =
      cfg.sliding_window > 0 ? std::min(cfg.max_seq_len, cfg.sliding_window) : cfg.max_seq_len;
  const int64_t window = std::min<int64_t>(longest, int64_t(prompt.size()) + opt.max_new_tokens);
  std::vector<int32_t> seq = prompt, out;
  Tensor tokens = Tensor::empty({1, window}, DType::i32);
  const Philox rng(opt.seed, stream_id("sample"));
  std::vector<float> probs(size_t(cfg.vocab_size));
  std::vector<int32_t> idx(size_t(cfg.vocab_size));
  for (int64_t i = 0; i < opt.max_new_tokens; ++i) {
    const int64_t start = std::max<int64_t>(0, int64_t(seq.size()) - window);
    const int64_t len = int64_t(seq.size()) - start;
    int32_t* tp = tokens.data<int32_t>();
    std::fill(tp, tp + window, 0);
    std::copy(seq.begin() + start, seq.end(), tp);
    const Tensor row = logits_row(tokens, len);
    const float* l = row.data<float>();
    const float* bad = std::find_if(l, l + cfg.vocab_size, [](float v) { return !std::isfinite(v); });
    NURI_CHECK(bad == l + cfg.vocab_size, "generate: the model's logit for token ", bad - l,
               " is ", *bad, ", not a finite number: its weights hold a NaN or an infinity (a "
               "run that diverged?); sample from an earlier checkpoint");
    int32_t next = 0;
    if (opt.temperature == 0) {
      next = int32_t(std::max_element(l, l + cfg.vocab_size) - l);
    } else {
      std::iota(idx.begin(), idx.end(), 0);
      int64_t k = opt.top_k > 0 ? std::min(opt.top_k, cfg.vocab_size) : cfg.vocab_size;
      std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                        [&](int32_t a, int32_t b) { return l[a] > l[b]; });
      const float mx = l[idx[0]];
      double z = 0;
      for (int64_t j = 0; j < k; ++j) {
        z += probs[size_t(j)] = std::exp((l[idx[size_t(j)]] - mx) / opt.temperature);
      }
      if (opt.top_p < 1) {  // the likeliest first: the fewest whose share reaches top_p
        double kept = 0;
        int64_t n = 0;
        while (n < k && kept < double(opt.top_p) * z) kept += probs[size_t(n++)];
        k = std::max<int64_t>(n, 1);
        z = kept;
      }
      double u = double(rng.uniform(uint64_t(i))) * z, c = 0;
      next = idx[size_t(k - 1)];
      for (int64_t j = 0; j < k; ++j) {
        c += probs[size_t(j)];
        if (u < c) {
          next = idx[size_t(j)];
          break;
        }
      }
    }
    seq.push_back(next);
    out.push_back(next);
    if (std::find(opt.stop.begin(), opt.stop.end(), next) != opt.stop.end()) break;
  }
  return out;
}

// Sequence parallelism splits a micro-batch's token rows, which a window of any length may not
// allow: sampling runs without it (the same values), and this turns it back on after.
class SequenceParallelOff {
 public:
  explicit SequenceParallelOff(const std::vector<Transformer*>& models) : models_(models) {
    for (Transformer* m : models_) {
      was_.push_back(m->sequence_parallel());
      m->set_sequence_parallel(false);
    }
  }
  ~SequenceParallelOff() {
    for (size_t i = 0; i < models_.size(); ++i) models_[i]->set_sequence_parallel(was_[i]);
  }
  SequenceParallelOff(const SequenceParallelOff&) = delete;
  SequenceParallelOff& operator=(const SequenceParallelOff&) = delete;

 private:
  std::vector<Transformer*> models_;
  std::vector<bool> was_;
};

// sample() with a key/value cache: decode(tokens, r0, r1) the logits at r1 - 1, and end() frees
// the caches when sampling ends or fails. The window grows by one token a call until it is
// full: each call after the first computes the new row alone (r0 = the rows cached). Once full
// it slides (the same length again): every row anew (r0 = 0).
std::vector<int32_t> sample_cached(
    const ModelConfig& cfg, const std::vector<int32_t>& prompt, const SampleOptions& opt,
    const std::function<Tensor(const Tensor&, int64_t, int64_t)>& decode,
    const std::function<void()>& end) {
  struct End {
    const std::function<void()>& fn;
    ~End() { fn(); }
  } at_end{end};
  int64_t cached = 0;
  return sample(cfg, prompt, opt, [&](const Tensor& tokens, int64_t len) {
    const int64_t r0 = len == cached + 1 ? cached : 0;
    cached = len;
    return decode(tokens, r0, len);
  });
}

}  // namespace

std::vector<int32_t> generate(Transformer& model, const std::vector<int32_t>& prompt,
                              const SampleOptions& opt) {
  const SequenceParallelOff sp_off({&model});
  if (!opt.cache || !model.first_stage() || !model.last_stage()) {
    return sample(model.config(), prompt, opt, [&](const Tensor& tokens, int64_t len) {
      model.logits(tokens);
      return model.logits_row(len - 1);
    });
  }
  return sample_cached(
      model.config(), prompt, opt,
      [&](const Tensor& tokens, int64_t r0, int64_t r1) { return model.decode(tokens, r0, r1); },
      [&] { model.end_decode(); });
}

std::vector<int32_t> generate(Pipeline& pipe, const std::vector<int32_t>& prompt,
                              const SampleOptions& opt) {
  const SequenceParallelOff sp_off(pipe.chunk_models());
  const ModelConfig& cfg = pipe.chunk_models().front()->config();
  if (!opt.cache) {
    return sample(cfg, prompt, opt, [&](const Tensor& tokens, int64_t len) {
      return pipe.logits_row(tokens, len - 1);
    });
  }
  return sample_cached(
      cfg, prompt, opt,
      [&](const Tensor& tokens, int64_t r0, int64_t r1) { return pipe.decode_row(tokens, r0, r1); },
      [&] { pipe.end_decode(); });
}

}  // namespace nuri
