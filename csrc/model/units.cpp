// The units' forward and backward (csrc/model/units.h), written once against the Backend
// interface. Pre-norm blocks; each norm is fused with the residual add before it:
//   block l: a = N1(h_l); h'_l = h_l + Attn(a); m = N2(h'_l); h_{l+1} = h'_l + MLP(m)
//   head:    logits = N_f(h_L) · Wᵀ
// where N1 of block l > 0 computes h_l = h'_{l-1} + mlp_out_{l-1} itself; N_f likewise.
// Recomputation runs the same calls again: a block that keeps its products recomputes the norms
// (and SwiGLU) from them; one that keeps only its input runs its whole forward from h_l.
#include "model/units.h"

namespace nuri::model {

namespace {

void norm_fwd(const Ctx& c, const Tensor& x, const Tensor& residual, const Tensor& w,
              const Tensor& b, const Tensor& sum, const Tensor& y, const Tensor& mean,
              const Tensor& rstd) {
  if (c.cfg.norm == NormKind::layernorm) {
    c.be.layernorm(x, residual, w, b, c.cfg.norm_eps, sum, y, mean, rstd);
  } else {
    c.be.rmsnorm(x, residual, w, c.cfg.norm_eps, sum, y, rstd);
  }
}

void norm_bwd(const Ctx& c, const Tensor& dy, const Tensor& s, const Tensor& w,
              const Tensor& mean, const Tensor& rstd, const Tensor& dsum, const Tensor& ds,
              const Tensor& dw, const Tensor& db) {
  if (c.cfg.norm == NormKind::layernorm) {
    c.be.layernorm_backward(dy, s, w, mean, rstd, dsum, ds, dw, db, true);
  } else {
    c.be.rmsnorm_backward(dy, s, w, rstd, dsum, ds, dw, true);
  }
}

// A block's tensors, each in its own buffer or in the shared one (allocated by the first block
// that needs it there: with no recomputation nothing is shared).
BlockActs allocate(const Ctx& c, Keep keep, BlockActs* shared) {
  Backend& be = c.be;
  const ModelConfig& m = c.cfg;
  const int64_t b = c.b, t = c.t, ch = m.d_model, d = m.head_dim();
  const int64_t h = c.heads(), hkv = c.kv_heads(), f = c.ff();
  const int64_t fch_width = m.mlp == MlpKind::gelu ? f : 2 * f;
  const bool ln = m.norm == NormKind::layernorm;
  // Keep::products drops the norms' outputs and statistics, h', and SwiGLU's output (GELU's
  // comes from the fc product's epilogue and is kept with it); Keep::input drops all but h_l.
  const bool cheap = keep == Keep::all;
  const bool products = keep != Keep::input;
  const bool swiglu_kept = keep == Keep::all || m.mlp == MlpKind::gelu;
  auto own = [&](bool mine, Tensor BlockActs::*field, const Shape& s, DType dt) {
    if (mine || !shared) return be.empty(s, dt);
    if (!(shared->*field).defined()) shared->*field = be.empty(s, dt);
    return shared->*field;
  };
  BlockActs a;
  a.keep = keep;
  const DType ad = c.act_dtype, f32 = DType::f32;
  const Shape stream = c.stream_shape();
  const int64_t rows = c.rows();
  a.ln1 = own(cheap, &BlockActs::ln1, {b, t, ch}, ad);
  if (ln) a.ln1_mean = own(cheap, &BlockActs::ln1_mean, {rows}, f32);
  a.ln1_rstd = own(cheap, &BlockActs::ln1_rstd, {rows}, f32);
  if (c.sp) {  // what only passes through: shared by every block
    a.ln1_part = own(false, &BlockActs::ln1_part, stream, ad);
    a.ln2_part = own(false, &BlockActs::ln2_part, stream, ad);
    a.whole = own(false, &BlockActs::whole, {b, t, ch}, ad);
  }
  a.qkv = own(products, &BlockActs::qkv, {b, t, h + 2 * hkv, d}, ad);
  a.atty = own(products, &BlockActs::atty, {b, t, h, d}, ad);
  a.lse = own(products, &BlockActs::lse, {b, h, t}, f32);
  a.attproj = own(products, &BlockActs::attproj, stream, ad);
  a.resid2 = own(cheap, &BlockActs::resid2, stream, ad);
  a.ln2 = own(cheap, &BlockActs::ln2, {b, t, ch}, ad);
  if (ln) a.ln2_mean = own(cheap, &BlockActs::ln2_mean, {rows}, f32);
  a.ln2_rstd = own(cheap, &BlockActs::ln2_rstd, {rows}, f32);
  a.fch = own(products, &BlockActs::fch, {b, t, fch_width}, ad);
  a.act = own(products && swiglu_kept, &BlockActs::act, {b, t, f}, ad);
  a.fcproj = own(products, &BlockActs::fcproj, stream, ad);
  return a;
}

}  // namespace

BlockScratch plan_scratch(const Ctx& c) {
  BlockScratch s;
  Backend& be = c.be;
  const ModelConfig& m = c.cfg;
  const int64_t b = c.b, t = c.t, d = m.head_dim(), f = c.ff();
  const int64_t h = c.heads(), hkv = c.kv_heads();
  const DType ad = c.act_dtype;
  s.d_resid = be.empty(c.stream_shape(), ad);
  s.d_ln = be.empty(c.stream_shape(), ad);
  s.d_qkv = be.empty({b, t, h + 2 * hkv, d}, ad);
  s.d_atty = be.empty({b, t, h, d}, ad);
  s.d_fch = be.empty({b, t, m.mlp == MlpKind::gelu ? f : 2 * f}, ad);
  s.d_act = be.empty({b, t, f}, ad);
  return s;
}

BlockActs plan_block(const Ctx& c, Keep keep, BlockScratch& scratch) {
  return allocate(c, keep, &scratch.acts);
}

HeadActs plan_head(const Ctx& c) {
  Backend& be = c.be;
  const int64_t bt = c.b * c.t;
  HeadActs a;
  a.resid_f = be.empty(c.stream_shape(), c.act_dtype);
  a.lnf = be.empty({c.b, c.t, c.cfg.d_model}, c.act_dtype);
  if (c.cfg.norm == NormKind::layernorm) a.lnf_mean = be.empty({c.rows()});
  a.lnf_rstd = be.empty({c.rows()});
  if (c.sp) {
    a.lnf_part = be.empty(c.stream_shape(), c.act_dtype);
    a.whole = be.empty({c.b, c.t, c.cfg.d_model}, c.act_dtype);
  }
  a.logits = be.empty({bt, c.vocab_cols()}, c.act_dtype);
  a.losses = be.empty({bt});
  a.ce_lse = be.empty({bt});
  a.loss = be.empty({1});
  if (c.place.size > 1) {
    a.shard_lse = be.empty({bt});
    a.shard_losses = be.empty({bt});
    a.part_lse = be.empty({c.place.size, bt});
    a.part_losses = be.empty({c.place.size, bt});
  }
  return a;
}

namespace {

// The block from its first norm's output on: attention, the second norm, the MLP.
void block_body(const Ctx& c, const UnitWeights& w, const BlockActs& a) {
  Backend& be = c.be;
  const int64_t b = c.b, t = c.t, h = c.heads(), hkv = c.kv_heads();
  be.matmul(a.ln1, w.qkv_w, w.qkv_b, a.qkv.view({b, t, -1}), Activation::none, Tensor(),
            Tensor());
  Tensor q = a.qkv.slice(2, 0, h), k = a.qkv.slice(2, h, h + hkv),
         v = a.qkv.slice(2, h + hkv, h + 2 * hkv);
  if (c.cfg.position == PositionKind::rope) {
    be.rope(q, q, c.cfg.rope(), 0);
    be.rope(k, k, c.cfg.rope(), 0);
  }
  AttentionOptions causal;
  causal.documents = c.documents;
  be.attention(q, k, v, a.atty, a.lse, causal);
  const Tensor o_out = c.sp ? a.whole : a.attproj;  // sp: partial sums of whole rows
  be.matmul(a.atty.view({b, t, -1}), w.o_w, c.once(w.o_b), o_out, Activation::none, Tensor(),
            Tensor());
  c.sum_rows(o_out, a.attproj);
  norm_fwd(c, a.attproj, a.resid, w.ln2_w, w.ln2_b, a.resid2, c.sp ? a.ln2_part : a.ln2,
           a.ln2_mean, a.ln2_rstd);
  c.gather_rows(a.ln2_part, a.ln2);
  if (c.cfg.mlp == MlpKind::gelu) {
    be.matmul(a.ln2, w.fc_w, w.fc_b, a.act, Activation::gelu, a.fch, Tensor());
  } else {
    be.matmul(a.ln2, w.fc_w, w.fc_b, a.fch, Activation::none, Tensor(), Tensor());
    be.swiglu(a.fch, a.act);
  }
  const Tensor p_out = c.sp ? a.whole : a.fcproj;
  be.matmul(a.act, w.proj_w, c.once(w.proj_b), p_out, Activation::none, Tensor(), Tensor());
  c.sum_rows(p_out, a.fcproj);
}

}  // namespace

void block_forward(const Ctx& c, const UnitWeights& w, BlockActs& a, const Tensor& x,
                   const Tensor& r) {
  const Tensor ln1 = c.sp ? a.ln1_part : a.ln1;
  if (r.defined()) {
    if (!a.resid.defined()) a.resid = c.be.empty(c.stream_shape(), c.act_dtype);
    norm_fwd(c, x, r, w.ln1_w, w.ln1_b, a.resid, ln1, a.ln1_mean, a.ln1_rstd);
  } else {  // x is h_l itself (block 0: the embedding's output)
    a.resid = x;
    norm_fwd(c, x, Tensor(), w.ln1_w, w.ln1_b, Tensor(), ln1, a.ln1_mean, a.ln1_rstd);
  }
  c.gather_rows(a.ln1_part, a.ln1);
  block_body(c, w, a);
}

void block_recompute(const Ctx& c, const UnitWeights& w, BlockActs& a) {
  if (a.keep == Keep::all) return;
  // N1 from the stored h_l is N1 of the fused forward bit for bit (see units.h).
  norm_fwd(c, a.resid, Tensor(), w.ln1_w, w.ln1_b, Tensor(), c.sp ? a.ln1_part : a.ln1,
           a.ln1_mean, a.ln1_rstd);
  c.gather_rows(a.ln1_part, a.ln1);
  if (a.keep == Keep::input) {
    block_body(c, w, a);
    return;
  }
  norm_fwd(c, a.attproj, a.resid, w.ln2_w, w.ln2_b, a.resid2, c.sp ? a.ln2_part : a.ln2,
           a.ln2_mean, a.ln2_rstd);
  c.gather_rows(a.ln2_part, a.ln2);
  if (c.cfg.mlp == MlpKind::swiglu) c.be.swiglu(a.fch, a.act);
}

DecodeActs plan_decode(const Ctx& c, int64_t window) {
  Backend& be = c.be;
  const ModelConfig& m = c.cfg;
  const int64_t ch = m.d_model, h = c.heads(), d = m.head_dim(), f = c.ff();
  const int64_t fw = m.mlp == MlpKind::swiglu ? 2 * f : f;
  DecodeActs a;
  for (Tensor* t : {&a.emb, &a.resid, &a.attproj, &a.resid2, &a.fcproj, &a.ln1, &a.ln2}) {
    *t = be.empty({window, ch}, c.act_dtype);
  }
  a.mean = be.empty({window});
  a.rstd = be.empty({window});
  a.q = be.empty({window, h, d}, c.act_dtype);
  be.zero(a.q);
  a.atty = be.empty({window, h, d}, c.act_dtype);
  a.lse = be.empty({h * window});
  a.fch = be.empty({window, fw}, c.act_dtype);
  a.act = be.empty({window, f}, c.act_dtype);
  a.logits = be.empty({1, c.vocab_cols()}, c.act_dtype);
  return a;
}

namespace {

// The first n rows of a [W, ...] decode buffer, as [1, n, ...].
Tensor first_rows(const Tensor& buf, int64_t n) {
  Shape shape = buf.shape();
  shape[0] = n;
  shape.insert(shape.begin(), 1);
  return buf.slice(0, 0, n).view(shape);
}

}  // namespace

void block_decode(const Ctx& c, const UnitWeights& w, const DecodeActs& a, const Tensor& cache,
                  const Tensor& x, const Tensor& r, int64_t r0, int64_t keys,
                  const Tensor& documents) {
  Backend& be = c.be;
  const int64_t n = c.t, end = r0 + n, h = c.heads(), hkv = c.kv_heads();
  const int64_t d = c.cfg.head_dim();
  NURI_CHECK(r0 == 0 ? keys >= n : keys == end, "block_decode: ", keys, " keys for rows [", r0,
             ", ", end, ")");
  const Tensor ln1 = first_rows(a.ln1, n), ln2 = first_rows(a.ln2, n);
  const Tensor mean = a.mean.slice(0, 0, n), rstd = a.rstd.slice(0, 0, n);
  const Tensor resid = r.defined() ? first_rows(a.resid, n) : x;
  norm_fwd(c, x, r, w.ln1_w, w.ln1_b, r.defined() ? resid : Tensor(), ln1, mean, rstd);
  // The fused QKV product in two: the queries into a.q, the keys and values into the cache.
  const Tensor q = first_rows(a.q, n);
  const Tensor kv = cache.slice(1, r0, end);  // [1, n, 2Hkv, D]: this call's rows
  const int64_t qw = h * d, kvw = 2 * hkv * d;
  auto part = [](const Tensor& t, int64_t from, int64_t to) {
    return t.defined() ? t.slice(0, from, to) : Tensor();
  };
  be.matmul(ln1, w.qkv_w.slice(0, 0, qw), part(w.qkv_b, 0, qw), q.view({1, n, qw}),
            Activation::none, Tensor(), Tensor());
  be.matmul(ln1, w.qkv_w.slice(0, qw, qw + kvw), part(w.qkv_b, qw, qw + kvw),
            kv.view({1, n, kvw}), Activation::none, Tensor(), Tensor());
  if (c.cfg.position == PositionKind::rope) {
    be.rope(q, q, c.cfg.rope(), r0);
    be.rope(kv.slice(2, 0, hkv), kv.slice(2, 0, hkv), c.cfg.rope(), r0);
  }
  const Tensor cached = cache.slice(1, 0, keys);
  const Tensor k = cached.slice(2, 0, hkv), v = cached.slice(2, hkv, 2 * hkv);
  AttentionOptions causal;
  causal.documents = documents;
  if (r0 == 0) {  // every row is new: the tiled kernels, the other rows' outputs unread
    be.attention(first_rows(a.q, keys), k, v, first_rows(a.atty, keys),
                 a.lse.slice(0, 0, h * keys).view({1, h, keys}), causal);
  } else {
    be.attention_decode(q, k, v, first_rows(a.atty, n), causal);
  }
  const Tensor attproj = first_rows(a.attproj, n);
  be.matmul(first_rows(a.atty, n).view({1, n, h * d}), w.o_w, c.once(w.o_b), attproj,
            Activation::none, Tensor(), Tensor());
  c.sum_rows(attproj, attproj);  // tensor parallelism: each rank's heads' share
  const Tensor resid2 = first_rows(a.resid2, n);
  norm_fwd(c, attproj, resid, w.ln2_w, w.ln2_b, resid2, ln2, mean, rstd);
  const Tensor fch = first_rows(a.fch, n), act = first_rows(a.act, n);
  const Tensor fcproj = first_rows(a.fcproj, n);
  if (c.cfg.mlp == MlpKind::gelu) {
    be.matmul(ln2, w.fc_w, w.fc_b, act, Activation::gelu, fch, Tensor());
  } else {
    be.matmul(ln2, w.fc_w, w.fc_b, fch, Activation::none, Tensor(), Tensor());
    be.swiglu(fch, act);
  }
  be.matmul(act, w.proj_w, c.once(w.proj_b), fcproj, Activation::none, Tensor(), Tensor());
  c.sum_rows(fcproj, fcproj);  // each rank's MLP columns' share
}

void head_decode(const Ctx& c, const UnitWeights& w, const Tensor& lm_head, const DecodeActs& a,
                 const Tensor& x, const Tensor& r) {
  const int64_t n = c.t, ch = c.cfg.d_model;
  const Tensor xl = x.slice(1, n - 1, n), rl = r.defined() ? r.slice(1, n - 1, n) : Tensor();
  // The residual sum of the last row goes to resid (free: the blocks are done with it).
  const Tensor lnf = first_rows(a.ln1, 1);
  norm_fwd(c, xl, rl, w.lnf_w, w.lnf_b, rl.defined() ? first_rows(a.resid, 1) : Tensor(), lnf,
           a.mean.slice(0, 0, 1), a.rstd.slice(0, 0, 1));
  c.be.matmul(lnf.view({1, ch}), lm_head, Tensor(), a.logits, Activation::none, Tensor(),
              Tensor());
}

void block_backward(const Ctx& c, const UnitWeights& w, const UnitWeights& g, BlockActs& a,
                    BlockScratch& s) {
  Backend& be = c.be;
  const int64_t b = c.b, t = c.t, h = c.heads(), hkv = c.kv_heads();
  // MLP: d_resid is the gradient at h_{l+1} = h'_l + fcproj (sp: this rank's rows, gathered
  // into whole rows for the row-parallel product's backward).
  const Tensor dy = c.sp ? a.whole : s.d_resid;
  c.gather_rows(s.d_resid, a.whole);
  if (c.cfg.mlp == MlpKind::gelu) {
    be.matmul_backward_input(dy, w.proj_w, s.d_fch, false, a.fch);  // through GELU
  } else {
    be.matmul_backward_input(dy, w.proj_w, s.d_act, false, Tensor());
    be.swiglu_backward(a.fch, s.d_act, s.d_fch);
  }
  be.matmul_backward_weight(dy, a.act, g.proj_w, true);
  if (g.proj_b.defined()) be.matmul_backward_bias(dy, g.proj_b, true);
  const Tensor dln = c.sp ? a.whole : s.d_ln;  // (dy is done with)
  be.matmul_backward_input(s.d_fch, w.fc_w, dln, false, Tensor());
  c.sum_rows(dln, s.d_ln);  // each rank's MLP columns contribute to d ln2
  be.matmul_backward_weight(s.d_fch, a.ln2, g.fc_w, true);
  if (g.fc_b.defined()) be.matmul_backward_bias(s.d_fch, g.fc_b, true);
  norm_bwd(c, s.d_ln, a.resid2, w.ln2_w, a.ln2_mean, a.ln2_rstd, s.d_resid, s.d_resid, g.ln2_w,
           g.ln2_b);
  // Attention: d_resid is now the gradient at h'_l = h_l + attproj.
  const Tensor atty2d = a.atty.view({b, t, h * c.cfg.head_dim()});
  const Tensor dy2 = c.sp ? a.whole : s.d_resid;
  c.gather_rows(s.d_resid, a.whole);
  be.matmul_backward_input(dy2, w.o_w, s.d_atty.view({b, t, -1}), false, Tensor());
  be.matmul_backward_weight(dy2, atty2d, g.o_w, true);
  if (g.o_b.defined()) be.matmul_backward_bias(dy2, g.o_b, true);
  Tensor q = a.qkv.slice(2, 0, h), k = a.qkv.slice(2, h, h + hkv),
         v = a.qkv.slice(2, h + hkv, h + 2 * hkv);
  Tensor dq = s.d_qkv.slice(2, 0, h), dk = s.d_qkv.slice(2, h, h + hkv),
         dv = s.d_qkv.slice(2, h + hkv, h + 2 * hkv);
  AttentionOptions causal;
  causal.documents = c.documents;
  be.attention_backward(q, k, v, a.atty, a.lse, s.d_atty, dq, dk, dv, causal);
  if (c.cfg.position == PositionKind::rope) {
    be.rope_backward(dq, dq, c.cfg.rope(), 0);
    be.rope_backward(dk, dk, c.cfg.rope(), 0);
  }
  const Tensor dqkv = s.d_qkv.view({b, t, -1});
  be.matmul_backward_input(dqkv, w.qkv_w, dln, false, Tensor());
  c.sum_rows(dln, s.d_ln);  // each rank's heads contribute to d ln1
  be.matmul_backward_weight(dqkv, a.ln1, g.qkv_w, true);
  if (g.qkv_b.defined()) be.matmul_backward_bias(dqkv, g.qkv_b, true);
  norm_bwd(c, s.d_ln, a.resid, w.ln1_w, a.ln1_mean, a.ln1_rstd, s.d_resid, s.d_resid, g.ln1_w,
           g.ln1_b);
}

void head_forward(const Ctx& c, const UnitWeights& w, const Tensor& lm_head, HeadActs& a,
                  const Tensor& x, const Tensor& r) {
  norm_fwd(c, x, r, w.lnf_w, w.lnf_b, r.defined() ? a.resid_f : Tensor(),
           c.sp ? a.lnf_part : a.lnf, a.lnf_mean, a.lnf_rstd);
  if (!r.defined()) a.resid_f = x;
  c.gather_rows(a.lnf_part, a.lnf);
  c.be.matmul(a.lnf.view({c.b * c.t, c.cfg.d_model}), lm_head, Tensor(), a.logits,
              Activation::none, Tensor(), Tensor());
}

void head_backward(const Ctx& c, const UnitWeights& w, const Tensor& lm_head,
                   const UnitWeights& g, const Tensor& dlm_head, HeadActs& a,
                   const Tensor& d_resid, const Tensor& d_ln) {
  const int64_t bt = c.b * c.t, ch = c.cfg.d_model;
  const Tensor dln = c.sp ? a.whole : d_ln;
  c.be.matmul_backward_input(a.logits, lm_head, dln.view({bt, ch}), false, Tensor());
  c.sum_rows(dln, d_ln);  // each rank's vocabulary columns contribute to d lnf
  c.be.matmul_backward_weight(a.logits, a.lnf.view({bt, ch}), dlm_head, true);
  norm_bwd(c, d_ln, a.resid_f, w.lnf_w, a.lnf_mean, a.lnf_rstd, Tensor(), d_resid, g.lnf_w,
           g.lnf_b);
}

}  // namespace nuri::model
