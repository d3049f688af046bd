// The pipeline executor (nuri/parallel/pipeline.h): one step of a schedule on this rank. Every
// rank simulates the same schedule (simulate_schedule), which gives each transfer a time: an
// activation leaves when its forward ends, a gradient when its backward ends. A rank runs its
// items in the order of those times: the transfers it takes part in, sorted the same way on
// every rank (time, then kind, stage and micro-batch), and its forwards and backwards at their
// start times. With blocking sends and receives that order cannot deadlock: the earliest
// transfer not yet done has both ranks at it, as everything before it on either rank is done.
// Received tensors wait in staging buffers until their forward or backward starts; a staging
// buffer is reused only once the op that read its last contents has started.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <tuple>

#include "nuri/core/error.h"
#include "nuri/parallel/pipeline.h"

namespace nuri {

namespace {

double now_us() {
  return double(std::chrono::duration_cast<std::chrono::nanoseconds>(
                    std::chrono::system_clock::now().time_since_epoch())
                    .count()) /
         1e3;
}

// One item of a rank's program.
struct Item {
  enum Kind { compute, send, recv } kind = compute;
  double time = 0;
  // A transfer's global order: (time, activation before gradient, stage, micro-batch).
  int grad = 0, stage = 0, micro = 0;
  size_t op = 0;  // compute: index into the rank's order
  int peer = -1;
  auto key() const { return std::make_tuple(time, kind == compute ? 1 : 0, grad, stage, micro); }
};

}  // namespace

Pipeline::Pipeline(std::vector<Transformer*> chunks, std::shared_ptr<Communicator> comm,
                   bool tied_group)
    : chunks_(std::move(chunks)), comm_(std::move(comm)) {
  NURI_CHECK(!chunks_.empty(), "Pipeline: no stage models");
  for (Transformer* c : chunks_) NURI_CHECK(c != nullptr, "Pipeline: a stage model is null");
  p_ = comm_ ? comm_->size() : 1;
  rank_ = comm_ ? comm_->rank() : 0;
  const int v = int(chunks_.size());
  const ModelConfig& cfg = chunks_[0]->config();
  // Chunk c must be virtual stage c·p + rank: contiguous with its neighbours' (checked here
  // where the neighbours are this rank's own chunks; across ranks the transfers' shapes are
  // the same either way).
  for (int c = 0; c < v; ++c) {
    const Transformer& m = *chunks_[size_t(c)];
    const int vs = c * p_ + rank_;
    NURI_CHECK(m.first_stage() == (vs == 0) && m.last_stage() == (vs == p_ * v - 1),
               "Pipeline: rank ", rank_, "'s chunk ", c, " is virtual stage ", vs, " of ", p_ * v,
               ", but its model holds blocks [", m.stage().first, ", ", m.stage().last,
               "); build chunk c from stage c·p + rank of pipeline_stages(cfg, p·v, ...)");
    NURI_CHECK(m.config().n_layer == cfg.n_layer && m.config().d_model == cfg.d_model,
               "Pipeline: the chunks are stages of different models");
  }
  NURI_CHECK(v == 1 || p_ > 1, "Pipeline: interleaving (", v,
             " chunks) needs at least 2 "
             "pipeline ranks; with one, hold the whole model");
  // Tied embeddings: stage 0 (rank 0's first chunk) and the last stage (rank p-1's last) sum
  // their wte gradients over a group of the two, unless the caller sums them.
  tied_by_caller_ = cfg.tied_embeddings && p_ > 1 && !tied_group;
  if (cfg.tied_embeddings && p_ > 1 && tied_group && (rank_ == 0 || rank_ == p_ - 1)) {
    tied_ = comm_->split({0, p_ - 1});
  }
}

void Pipeline::record_timeline(bool on) {
  record_ = on;
  spans_.clear();
}

std::vector<float> Pipeline::step(const std::vector<MicroBatch>& micro, float loss_scale,
                                  const Hooks& hooks) {
  return step(micro, std::vector<float>(micro.size(), loss_scale), hooks);
}

std::vector<float> Pipeline::step(const std::vector<MicroBatch>& micro,
                                  const std::vector<float>& loss_scales, const Hooks& hooks) {
  check_micro_batches(micro);
  NURI_CHECK(loss_scales.size() == micro.size(), "Pipeline::step: ", loss_scales.size(),
             " loss scales for ", micro.size(), " micro-batches");
  const int m = int(micro.size()), v = int(chunks_.size()), stages = p_ * v;
  const int64_t b = micro[0].tokens.size(0), t = micro[0].tokens.size(1);
  const auto schedule = pipeline_schedule(p_, m, v);
  const ScheduleTiming timing = simulate_schedule(schedule, v);
  const auto& ops = schedule[size_t(rank_)];
  auto vstage = [&](int chunk) { return chunk * p_ + rank_; };
  const ScheduleTimes times = schedule_times(schedule, timing, v);
  const auto& f_end = times.f_end;
  const auto& b_end = times.b_end;
  // This rank's program.
  std::vector<Item> items;
  for (size_t i = 0; i < ops.size(); ++i) {
    const PipelineOp& o = ops[i];
    const int vs = vstage(o.chunk);
    Item c;
    c.kind = Item::compute;
    c.time = timing.start[size_t(rank_)][i];
    c.op = i;
    items.push_back(c);
    // What leaves with its end, and what arrives for it (at its producer's end).
    const int to = o.backward ? vs - 1 : vs + 1;
    if (to >= 0 && to < stages) {
      items.push_back({Item::send, timing.end[size_t(rank_)][i], o.backward, vs, o.micro, i,
                       to % p_});
    }
    const int from = o.backward ? vs + 1 : vs - 1;
    if (from >= 0 && from < stages) {
      const double at =
          o.backward ? b_end[size_t(from)][size_t(o.micro)] : f_end[size_t(from)][size_t(o.micro)];
      items.push_back({Item::recv, at, o.backward, from, o.micro, i, from % p_});
    }
  }
  std::sort(items.begin(), items.end(),
            [](const Item& a, const Item& c) { return a.key() < c.key(); });

  // Staging for what arrives (pipeline_buffers), kept from step to step while the shapes and
  // counts hold.
  act_.resize(size_t(v));
  grad_.resize(size_t(v));
  for (int c = 0; c < v; ++c) {
    Transformer& model = *chunks_[size_t(c)];
    const PipelineBuffers want = pipeline_buffers(p_, m, v, rank_, c);
    model.set_micro_batch_slots(want.slots);
    model.prepare(b, t);
    Backend& be = model.backend();
    MemoryScope activations(MemoryCategory::activations);
    for (const bool g : {false, true}) {
      Staging& st = (g ? grad_ : act_)[size_t(c)];
      const int count = g ? want.grad_staging : want.act_staging;
      if (count == 0) {
        st = Staging{};
        continue;
      }
      const Tensor like = g ? model.stage_output_grad() : model.stage_input().first;
      if (st.slots == count && st.x.front().shape() == like.shape()) continue;
      st = Staging{};
      st.slots = count;
      for (int k = 0; k < count; ++k) {
        st.x.push_back(be.empty(like.shape(), like.dtype()));
        if (!g) st.r.push_back(be.empty(like.shape(), like.dtype()));
      }
    }
  }
  auto slot_of = [&](int chunk, int k) { return k % chunks_[size_t(chunk)]->micro_batch_slots(); };
  // The last stage's losses stay on the device until the end of the step.
  Transformer& last = *chunks_.back();
  Tensor losses_dev;
  if (last.last_stage()) losses_dev = last.backend().empty({m});

  const double t0 = now_us();
  if (record_) spans_.clear();
  auto span = [&](const char* name, const PipelineOp& o, double start) {
    if (record_) spans_.push_back({name, o.chunk, o.micro, start, now_us() - start});
  };
  for (const Item& it : items) {
    const PipelineOp& o = ops[it.op];
    Transformer& model = *chunks_[size_t(o.chunk)];
    const int slot = slot_of(o.chunk, o.micro);
    const double start = now_us();
    if (it.kind == Item::compute) {
      if (!o.backward) {
        if (!model.first_stage()) {
          const Staging& st = act_[size_t(o.chunk)];
          const auto [x, r] = model.stage_input();
          model.backend().copy(st.x[size_t(o.micro % st.slots)], x);
          model.backend().copy(st.r[size_t(o.micro % st.slots)], r);
        }
        const MicroBatch& mb = micro[size_t(o.micro)];
        const Tensor loss = model.forward_stage(slot, mb.tokens, mb.targets);
        if (model.last_stage()) model.backend().copy(loss, losses_dev.slice(0, o.micro, o.micro + 1));
        span("F", o, start);
      } else {
        if (!model.last_stage()) {
          const Staging& st = grad_[size_t(o.chunk)];
          model.backend().copy(st.x[size_t(o.micro % st.slots)], model.stage_output_grad());
        }
        if (hooks.before_backward) hooks.before_backward(o.chunk, o.micro, o.micro == m - 1);
        model.backward_stage(slot, loss_scales[size_t(o.micro)]);
        if (hooks.after_backward) hooks.after_backward(o.chunk);
        span("B", o, start);
      }
      continue;
    }
    // A transfer to or from another rank (p > 1: a rank's chunks are never neighbours).
    const bool g = it.grad != 0;
    const int vs = vstage(o.chunk);
    if (it.kind == Item::send) {
      transfer(true, g, vs, o.micro, it.peer, [&] {
        if (g) {
          comm_->send(model.stage_input_grad(), it.peer);
        } else {
          const auto [x, r] = model.stage_output(slot);
          comm_->send(x, it.peer);
          comm_->send(r, it.peer);
        }
      });
      span("send", o, start);
    } else {
      const Staging& st = (g ? grad_ : act_)[size_t(o.chunk)];
      const size_t k = size_t(o.micro % st.slots);
      transfer(false, g, vs, o.micro, it.peer, [&] {
        comm_->recv(st.x[k], it.peer);
        if (!g) comm_->recv(st.r[k], it.peer);
      });
      span("recv", o, start);
    }
  }
  step_start_us_ = t0;
  step_end_us_ = now_us();
  return share_losses(losses_dev, m);
}

void Pipeline::transfer(bool sending, bool grad, int vs, int micro, int peer,
                        const std::function<void()>& fn) const {
  // A failure (a peer that died or hangs: the communicator's timeout) names both stages.
  try {
    fn();
  } catch (const Error& e) {
    const int other = sending ? (grad ? vs - 1 : vs + 1) : (grad ? vs + 1 : vs - 1);
    NURI_CHECK(false, "pipeline stage ", vs, " (pipeline rank ", rank_, "): ",
               sending ? "sending" : "receiving", " micro-batch ", micro, "'s ",
               grad ? "gradient" : "activations", sending ? " to" : " from", " stage ", other,
               " (pipeline rank ", peer, ") failed: ", e.what());
  }
}

void Pipeline::check_micro_batches(const std::vector<MicroBatch>& micro) const {
  // Every rank checks every id before any transfer: a bad target found by the last stage alone
  // would leave the others waiting for it until the timeout.
  const ModelConfig& cfg = chunks_.front()->config();
  NURI_CHECK(!micro.empty(), "Pipeline: no micro-batches");
  const int64_t b = micro[0].tokens.defined() ? micro[0].tokens.size(0) : 0;
  const int64_t t = micro[0].tokens.defined() ? micro[0].tokens.size(1) : 0;
  for (size_t k = 0; k < micro.size(); ++k) {
    for (const bool tg : {false, true}) {
      const Tensor& x = tg ? micro[k].targets : micro[k].tokens;
      const char* what = tg ? "targets" : "tokens";
      NURI_CHECK(x.defined() && x.dtype() == DType::i32 && x.dim() == 2 &&
                     x.device().is_cpu() && x.is_contiguous() && x.size(0) == b &&
                     x.size(1) == t,
                 "Pipeline: micro-batch ", k, "'s ", what, " must be a contiguous [", b, ", ", t,
                 "] i32 host tensor (every micro-batch the first one's shape), got ",
                 x.defined() ? x.str() : std::string("nothing"));
      const int32_t* p = x.data<int32_t>();
      for (int64_t i = 0; i < x.numel(); ++i) {
        if (tg && p[i] == -100) continue;
        NURI_CHECK(p[i] >= 0 && p[i] < cfg.vocab_size, "Pipeline: micro-batch ", k, "'s ", what,
                   ": id ", p[i], " at batch ", i / t, ", position ", i % t,
                   " is outside the vocabulary [0, ", cfg.vocab_size, ")");
      }
    }
  }
}

std::vector<float> Pipeline::share_losses(const Tensor& losses_dev, int m) const {
  // The last stage waits for its tensor-parallel collectives (with their timeout) before it
  // reads the losses, then sends them to every rank of the pipeline.
  std::vector<float> losses(size_t(m), 0.f);
  Transformer& last = *chunks_.back();
  if (losses_dev.defined()) {
    if (TensorParallelHooks* h = last.tensor_parallel_hooks()) h->wait();
    Tensor host = Tensor::empty({m}, DType::f32);
    last.backend().copy(losses_dev, host);
    std::copy(host.data<float>(), host.data<float>() + m, losses.begin());
  }
  if (p_ > 1) {
    Communicator* host = comm_->host_communicator();
    Tensor l = Tensor::empty({m}, DType::f32);
    std::copy(losses.begin(), losses.end(), l.data<float>());
    host->broadcast(l, p_ - 1);
    std::copy(l.data<float>(), l.data<float>() + m, losses.begin());
  }
  return losses;
}

std::vector<float> Pipeline::forward_only(const std::vector<MicroBatch>& micro) {
  // Micro-batch after micro-batch through the virtual stages in order: each rank receives,
  // runs its chunk and sends on, so every transfer's two ranks meet in the same order.
  if (micro.empty()) return {};
  check_micro_batches(micro);
  const int v = int(chunks_.size()), stages = p_ * v, m = int(micro.size());
  for (Transformer* c : chunks_) c->prepare(micro[0].tokens.size(0), micro[0].tokens.size(1));
  Transformer& last = *chunks_.back();
  Tensor losses_dev;
  if (last.last_stage()) losses_dev = last.backend().empty({m});
  for (int k = 0; k < m; ++k) {
    for (int vs = rank_; vs < stages; vs += p_) {
      Transformer& model = *chunks_[size_t(vs / p_)];
      if (vs > 0) {
        const auto [x, r] = model.stage_input();
        transfer(false, false, vs, k, (vs - 1) % p_, [&, &x = x, &r = r] {  // (clang: init-capture)
          comm_->recv(x, (vs - 1) % p_);
          comm_->recv(r, (vs - 1) % p_);
        });
      }
      const Tensor loss = model.forward_stage(0, micro[size_t(k)].tokens, micro[size_t(k)].targets);
      if (model.last_stage()) {
        model.backend().copy(loss, losses_dev.slice(0, k, k + 1));
      } else {
        const auto [x, r] = model.stage_output(0);
        transfer(true, false, vs, k, (vs + 1) % p_, [&, &x = x, &r = r] {
          comm_->send(x, (vs + 1) % p_);
          comm_->send(r, (vs + 1) % p_);
        });
      }
    }
  }
  return share_losses(losses_dev, m);
}

Tensor Pipeline::logits_row(const Tensor& tokens, int64_t pos) {
  // As forward_only's one micro-batch: every rank checks the ids before any transfer.
  check_micro_batches({{tokens, tokens}});
  NURI_CHECK(pos >= 0 && pos < tokens.size(1), "Pipeline::logits_row: position ", pos,
             " is outside the tokens' ", tokens.size(1));
  const int v = int(chunks_.size()), stages = p_ * v;
  for (Transformer* c : chunks_) c->prepare(tokens.size(0), tokens.size(1));
  Tensor row = Tensor::empty({chunks_.front()->config().padded_vocab()}, DType::f32);
  for (int vs = rank_; vs < stages; vs += p_) {
    Transformer& model = *chunks_[size_t(vs / p_)];
    if (vs > 0) {
      const auto [x, r] = model.stage_input();
      transfer(false, false, vs, 0, (vs - 1) % p_, [&, &x = x, &r = r] {
        comm_->recv(x, (vs - 1) % p_);
        comm_->recv(r, (vs - 1) % p_);
      });
    }
    model.logits_stage(tokens);
    if (model.last_stage()) {
      row = model.logits_row(pos);
    } else {
      const auto [x, r] = model.stage_output(0);
      transfer(true, false, vs, 0, (vs + 1) % p_, [&, &x = x, &r = r] {
        comm_->send(x, (vs + 1) % p_);
        comm_->send(r, (vs + 1) % p_);
      });
    }
  }
  if (p_ > 1) comm_->host_communicator()->broadcast(row, p_ - 1);
  return row;
}

Tensor Pipeline::decode_row(const Tensor& tokens, int64_t r0, int64_t r1) {
  // As logits_row: every rank checks the ids, and each chunk what its decode_stage() would
  // refuse, before any transfer (a refusal on one rank alone would leave its peers waiting).
  check_micro_batches({{tokens, tokens}});
  for (const Transformer* c : chunks_) c->check_decode(tokens, r0, r1);
  try {
    return decode_chunks(tokens, r0, r1);
  } catch (...) {
    end_decode();  // the chunks' caches may disagree now: the next call starts anew (r0 = 0)
    throw;
  }
}

Tensor Pipeline::decode_chunks(const Tensor& tokens, int64_t r0, int64_t r1) {
  const int v = int(chunks_.size()), stages = p_ * v;
  const ModelConfig& cfg = chunks_.front()->config();
  Tensor row = Tensor::empty({cfg.padded_vocab()}, DType::f32);
  for (int vs = rank_; vs < stages; vs += p_) {
    Transformer& model = *chunks_[size_t(vs / p_)];
    Tensor x, r;
    if (vs > 0) {
      const Backend& be = model.backend();
      x = be.empty({1, r1 - r0, cfg.d_model}, model.compute_dtype());
      r = be.empty({1, r1 - r0, cfg.d_model}, model.compute_dtype());
      transfer(false, false, vs, 0, (vs - 1) % p_, [&] {
        comm_->recv(x, (vs - 1) % p_);
        comm_->recv(r, (vs - 1) % p_);
      });
    }
    const Tensor logits = model.decode_stage(tokens, r0, r1, x, r);
    if (model.last_stage()) {
      row = logits;
    } else {
      const auto [ox, orr] = model.decode_output();
      transfer(true, false, vs, 0, (vs + 1) % p_, [&, &ox = ox, &orr = orr] {
        comm_->send(ox, (vs + 1) % p_);
        comm_->send(orr, (vs + 1) % p_);
      });
    }
  }
  if (p_ > 1) comm_->host_communicator()->broadcast(row, p_ - 1);
  return row;
}

void Pipeline::end_decode() {
  for (Transformer* c : chunks_) c->end_decode();
}

void Pipeline::sum_tied_gradients(const Tensor& wte) {
  NURI_CHECK(!tied_by_caller_, "Pipeline: sum_tied_gradients on a pipeline built with "
             "tied_group false, whose caller sums the tied embedding's gradients itself");
  if (!tied_) return;
  Tensor g = wte;
  if (!g.defined()) {
    Transformer* mine = rank_ == 0 ? chunks_.front() : chunks_.back();
    const std::string& name = mine->layout().front().name;
    for (const NamedTensor& n : mine->gradients()) {
      if (n.name == name) g = n.tensor;
    }
  }
  NURI_CHECK(g.defined(), "Pipeline: the stage holding the tied embedding has no gradient for "
             "it here (its gradients were handed to hooks); pass the gradient of wte");
  tied_->all_reduce(g);
}

double Pipeline::measured_bubble() const {
  const double total = step_end_us_ - step_start_us_;
  if (spans_.empty() || total <= 0) return 0;
  double busy = 0;
  for (const TimelineSpan& s : spans_) {
    if (s.name == "F" || s.name == "B") busy += s.dur_us;
  }
  return std::max(0.0, 1 - busy / total);
}

void Pipeline::write_chrome_trace(const std::string& path) const {
  // Each rank's events as JSON text, gathered to rank 0 by length and bytes (in f32 tensors).
  std::string mine;
  for (const TimelineSpan& s : spans_) {
    char buf[256];
    std::snprintf(buf, sizeof buf,
                  "%s{\"name\":\"%s %d\",\"cat\":\"%s\",\"ph\":\"X\",\"ts\":%.3f,\"dur\":%.3f,"
                  "\"pid\":%d,\"tid\":%d,\"args\":{\"micro_batch\":%d,\"chunk\":%d}}",
                  mine.empty() ? "" : ",", s.name.c_str(), s.micro, s.name.c_str(), s.start_us,
                  s.dur_us, rank_, s.chunk, s.micro, s.chunk);
    mine += buf;
  }
  std::vector<std::string> all{mine};
  if (p_ > 1) {
    // Point to point moves the bits of f32 tensors unchanged: the text rides in their bytes,
    // after its length.
    Communicator* host = comm_->host_communicator();
    auto holder = [](size_t bytes) {
      return Tensor::zeros({int64_t(bytes + 3) / 4 + 1}, DType::f32);
    };
    // The length as two f32 of 24 bits each (exact), so every rank sends what it has: a rank
    // refusing alone would leave rank 0 waiting for it.
    constexpr size_t k24 = size_t(1) << 24;
    if (rank_ == 0) {
      for (int r = 1; r < p_; ++r) {
        Tensor n = Tensor::empty({2}, DType::f32);
        host->recv(n, r);
        const size_t bytes = size_t(n.data<float>()[0]) + size_t(n.data<float>()[1]) * k24;
        Tensor w = holder(bytes);
        host->recv(w, r);
        all.emplace_back(reinterpret_cast<const char*>(w.data<float>()), bytes);
      }
    } else {
      Tensor n = Tensor::empty({2}, DType::f32);
      n.data<float>()[0] = float(mine.size() % k24);
      n.data<float>()[1] = float(mine.size() / k24);
      Tensor w = holder(mine.size());
      std::copy(mine.begin(), mine.end(), reinterpret_cast<char*>(w.data<float>()));
      host->send(n, 0);
      host->send(w, 0);
      return;
    }
  }
  std::ofstream out(path);
  NURI_CHECK(out.good(), "write_chrome_trace: cannot write '", path, "'");
  out << "{\"displayTimeUnit\":\"ms\",\"traceEvents\":[";
  bool first = true;
  for (int r = 0; r < int(all.size()); ++r) {
    char meta[160];
    std::snprintf(meta, sizeof meta,
                  "%s{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":%d,\"args\":{\"name\":"
                  "\"pipeline stage %d\"}}",
                  first ? "" : ",", r, r);
    out << meta;
    first = false;
    if (!all[size_t(r)].empty()) out << "," << all[size_t(r)];
  }
  out << "]}\n";
  NURI_CHECK(out.good(), "write_chrome_trace: writing '", path, "' failed");
}

}  // namespace nuri
