// The activation plan as byte counts (nuri/model/memory.h). It follows Transformer::plan() and
// units.cpp's allocate(), plan_scratch() and plan_head() tensor by tensor; test_recompute holds
// the two to the same bytes, so a change to one that forgets the other fails there.
#include "nuri/model/memory.h"

namespace nuri {

std::vector<PlannedTensor> activation_plan(const ModelConfig& m, const ActivationShape& s) {
  const int64_t L = m.n_layer, first = s.stage.first, last = s.stage.last < 0 ? L : s.stage.last;
  const bool first_stage = first == 0, last_stage = last == L;
  const int64_t tp = s.place.size, b = s.b, t = s.t, bt = b * t, c = m.d_model;
  const int64_t d = m.head_dim(), h = m.n_head / tp, hkv = m.n_kv_head / tp, f = m.d_ff / tp;
  const int64_t fw = m.mlp == MlpKind::gelu ? f : 2 * f;
  const int64_t rows = s.sp ? bt / tp : bt;
  const int64_t e = int64_t(dtype_size(s.act)), f32 = 4;
  const bool ln = m.norm == NormKind::layernorm;
  const int64_t stream = e * rows * c, whole = e * bt * c;
  std::vector<PlannedTensor> out;
  auto add = [&](const std::string& what, int64_t bytes, int64_t count = 1) {
    if (count > 0 && bytes > 0) out.push_back({what, bytes, count});
  };
  // What one block keeps of its forward, by the groups of allocate(): the norms' outputs and
  // statistics and h' (kept only when nothing is recomputed), the products (dropped by full
  // recomputation), SwiGLU's output (kept with the products for GELU, whose epilogue makes it).
  struct Group {
    std::vector<PlannedTensor> tensors;
  };
  const Group cheap{{{"ln1", whole},
                     {"ln1 mean", ln ? f32 * rows : 0},
                     {"ln1 rstd", f32 * rows},
                     {"h'", stream},
                     {"ln2", whole},
                     {"ln2 mean", ln ? f32 * rows : 0},
                     {"ln2 rstd", f32 * rows}}};
  const Group products{{{"qkv", e * bt * (h + 2 * hkv) * d},
                        {"attention out", e * bt * h * d},
                        {"attention lse", f32 * b * h * t},
                        {"attention proj", stream},
                        {"mlp fc", e * bt * fw},
                        {"mlp proj", stream}}};
  const Group act{{{"mlp act", e * bt * f}}};
  int64_t keep_all = 0, keep_products = 0, keep_input = 0;
  for (int64_t l = first; l < last; ++l) {
    const bool recomputed = s.recompute != Recompute::none && l % s.every == 0;
    if (!recomputed) {
      ++keep_all;
    } else if (s.recompute == Recompute::selective) {
      ++keep_products;
    } else {
      ++keep_input;
    }
  }
  const int slots = s.slots;
  // Per slot: the blocks' own tensors, and the shared copy of each one some block does not keep.
  const bool act_kept_by_products = m.mlp == MlpKind::gelu;
  for (const PlannedTensor& x : cheap.tensors) {
    add("slot: " + x.what, x.bytes, slots * keep_all);
    if (keep_products + keep_input > 0) add("shared: " + x.what, x.bytes);
  }
  for (const PlannedTensor& x : products.tensors) {
    add("slot: " + x.what, x.bytes, slots * (keep_all + keep_products));
    if (keep_input > 0) add("shared: " + x.what, x.bytes);
  }
  for (const PlannedTensor& x : act.tensors) {
    const int64_t own = keep_all + (act_kept_by_products ? keep_products : 0);
    add("slot: " + x.what, x.bytes, slots * own);
    if (own < last - first) add("shared: " + x.what, x.bytes);
  }
  if (s.sp) {  // what only passes through, shared by every block
    add("shared: ln1 part", stream);
    add("shared: ln2 part", stream);
    add("shared: whole rows", whole);
  }
  // Each block's input h_l, allocated by its first forward (block 0's is the embedding's output).
  add("slot: block input", stream, slots * (last - first - (first_stage ? 1 : 0)));
  // The backward's gradient scratch, reused by every block.
  add("scratch: d resid", stream);
  add("scratch: d norm", stream);
  add("scratch: d qkv", e * bt * (h + 2 * hkv) * d);
  add("scratch: d attention", e * bt * h * d);
  add("scratch: d mlp fc", e * bt * fw);
  add("scratch: d mlp act", e * bt * f);
  // The stage's ends.
  if (first_stage) {
    add("slot: embedding out", stream, slots);
    if (s.sp) add("embedding whole rows", whole);
    if (s.device) add("slot: token ids", f32 * bt, slots);
  } else {
    add("stage input x, r", stream, 2);
  }
  if (!last_stage) add("stage output gradient", stream);
  if (s.device && s.documents) {
    add("slot: document bounds", 2 * 4 * bt, slots);
    if (first_stage && m.position == PositionKind::learned) {
      add("slot: document positions", 4 * bt, slots);
    }
  }
  if (last_stage) {
    add("slot: head h_L", stream, slots);
    add("slot: final norm", whole, slots);
    add("slot: final norm mean", ln ? f32 * rows : 0, slots);
    add("slot: final norm rstd", f32 * rows, slots);
    if (s.sp) {
      add("slot: final norm part", stream, slots);
      add("slot: final norm whole rows", whole, slots);
    }
    add("slot: logits", e * bt * (m.padded_vocab() / tp), slots);
    add("slot: losses, lse", f32 * bt, 2 * slots);
    add("slot: loss", f32, slots);
    if (tp > 1) {
      add("slot: shard lse, losses", f32 * bt, 2 * slots);
      add("slot: every shard's lse, losses", f32 * tp * bt, 2 * slots);
    }
    if (s.device) add("slot: target ids", f32 * bt, slots);
  }
  return out;
}

int64_t activation_bytes(const ModelConfig& cfg, const ActivationShape& shape,
                         const std::function<int64_t(int64_t)>& block) {
  int64_t total = 0;
  for (const PlannedTensor& x : activation_plan(cfg, shape)) {
    total += x.count * (block ? block(x.bytes) : x.bytes);
  }
  return total;
}

}  // namespace nuri
