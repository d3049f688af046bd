// The model's units (DESIGN.md, "Models larger than one GPU"): the embedding, L decoder blocks
// and the head, in that order in the flat parameter layout. Each unit declares its parameters
// once: name, shape, init, and the field of UnitWeights its view binds to (or a fused view over
// consecutive parameters: q/k/v, gate/up). From these declarations come the flat layout, the
// named and typed views of every buffer, and the backward's order of units (the reverse).
//
// A block's input is the residual stream h_l as two parts, x + r (the previous block's MLP
// output and its h'), because each norm is fused with the residual add before it; block 0 and
// the recomputation of any block read h_l itself (x = h_l, no r). The norms round s = x + r to
// the activation dtype before their statistics, so norm(h_l) recomputed from the stored h_l is
// the same bits as the fused forward.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "nuri/backend/backend.h"
#include "nuri/model/transformer.h"

namespace nuri::model {

enum class UnitKind { embedding, block, head };

/// Typed views of one unit's parameters (only its own fields are set).
struct UnitWeights {
  Tensor wte, wpe;  // embedding: [Vp, C], [Tmax, C] (no wpe with rope)
  Tensor ln1_w, ln1_b, qkv_w, qkv_b, o_w, o_b;  // block: qkv_w [(H + 2Hkv)·D, C], o_w [C, H·D]
  Tensor ln2_w, ln2_b, fc_w, fc_b, proj_w, proj_b;  // fc_w [F or 2F, C] (gate | up), proj_w [C, F]
  Tensor lnf_w, lnf_b, lm_head;                     // head: lm_head [Vp, C] (untied only)
};
using Field = Tensor UnitWeights::*;

struct UnitDecl {
  UnitKind kind = UnitKind::block;
  int64_t layer = -1;     ///< blocks: 0 .. L-1
  std::string name;       ///< "embedding", "block 3", "head": for messages
  std::vector<ParamSpec> params;  ///< in layout order; offsets into the whole flat layout
  std::vector<Field> fields;      ///< per param: the view it binds to (null: fused only)
  struct Fused {
    Field field;
    size_t first;  ///< index into params of the first of the consecutive tensors
    Shape shape;   ///< the fused view's shape
  };
  std::vector<Fused> fused;
  int64_t lo = 0, hi = 0;  ///< the unit's flat range [lo, hi)
};

/// Every unit of `cfg` in layout order (embedding, blocks 0 .. L-1, head), offsets assigned: the
/// slices tensor-parallel rank `tp` holds; of a pipeline stage, the units it holds (its blocks,
/// the embedding on the first stage and on a tied model's last, the head on the last), offsets
/// from 0 in the stage's own flat layout.
std::vector<UnitDecl> model_units(const ModelConfig& cfg, TensorParallelRank tp = {},
                                  PipelineStage stage = {});

/// The view of the flat layout at (offset, shape), or undefined where the storage behind it has
/// no such range.
using ViewFn = std::function<Tensor(int64_t offset, const Shape& shape)>;
ViewFn views_of(const Tensor& flat);
/// Views of a region holding the flat range [lo, hi) only.
ViewFn views_of_region(const Tensor& region, int64_t lo, int64_t hi);
/// Unit u's typed views.
UnitWeights bind_unit(const UnitDecl& u, const ViewFn& view);
/// Unit u's named views, appended to `named` (layout order).
void named_views(const UnitDecl& u, const ViewFn& view, std::vector<NamedTensor>& named);

/// What recomputation a block does (TrainConfig::recompute, for every k-th block).
enum class Keep { all, products, input };

/// One block's activations for one micro-batch. Tensors a block does not keep (Keep::products:
/// the norms' outputs and statistics, h', SwiGLU's output; Keep::input: all but its input h_l)
/// are views of the shared BlockScratch, written again by recompute() before the backward.
struct BlockActs {
  Keep keep = Keep::all;
  Tensor resid;                    // [B, T, C] h_l, the block's input (block 0: the embedding's)
  Tensor ln1, ln1_mean, ln1_rstd;  // [B, T, C], [B·T], [B·T]
  Tensor qkv;                      // [B, T, H + 2·Hkv, D] (q, k after RoPE)
  Tensor atty, lse;                // [B, T, H, D], [B, H, T]
  Tensor attproj;                  // [B, T, C]
  Tensor resid2;                   // [B, T, C] h'_l
  Tensor ln2, ln2_mean, ln2_rstd;
  Tensor fch;     // [B, T, F] GELU pre-activation | [B, T, 2F] gate | up
  Tensor act;     // [B, T, F]
  Tensor fcproj;  // [B, T, C]
  // Sequence parallelism: resid, attproj, resid2, fcproj and the norms' statistics hold this
  // rank's rows; ln1 and ln2 are the gathered whole rows of ln1_part and ln2_part; `whole` is
  // the shared [B, T, C] buffer of the row-parallel products' partial sums and the backward's
  // gathered gradients.
  Tensor ln1_part, ln2_part, whole;
};

/// What blocks share: the tensors of blocks that do not keep them (one of each, allocated by the
/// first such block), and the backward's gradient scratch (reused by every block).
struct BlockScratch {
  BlockActs acts;
  Tensor d_resid, d_ln, d_qkv, d_atty, d_fch, d_act;
};

struct HeadActs {
  Tensor resid_f, lnf, lnf_mean, lnf_rstd;  // [B, T, C], ..., [B·T]
  Tensor logits;                            // [B·T, Vp]; the backward overwrites it with dlogits
  Tensor losses, ce_lse, loss;              // [B·T], [B·T], [1]
  Tensor lnf_part, whole;                   // sequence parallelism: as BlockActs
  // Tensor parallelism: this slice's lse and losses, and every slice's ([t, B·T], f32)
  Tensor shard_lse, shard_losses, part_lse, part_losses;
};

/// The context of a unit's forward and backward.
struct Ctx {
  Backend& be;
  const ModelConfig& cfg;
  int64_t b, t;
  DType act_dtype;
  /// Tensor parallelism: this rank's place and the group's collectives (null: one rank). The
  /// rank holds heads() query heads, kv_heads() key/value heads, ff() MLP columns and
  /// vocab_cols() vocabulary rows; the row-parallel products' outputs and the column-parallel
  /// products' input gradients are summed over the group, the row-parallel biases added by
  /// rank 0 alone.
  TensorParallelRank place{};
  TensorParallelHooks* tp = nullptr;
  /// Sequence parallelism (with tp): the residual stream, the norms and their statistics hold
  /// this rank's rows() of the B·T token rows alone (rank r: rows [r·rows(), (r+1)·rows()));
  /// each norm's output is all-gathered into whole rows before its column-parallel product, and
  /// each row-parallel product's partial sums are reduce-scattered into the rank's rows.
  bool sp = false;
  /// Packed documents: the micro-batch's document bounds (AttentionOptions::documents), or
  /// undefined.
  Tensor documents{};
  int64_t rows() const { return sp ? b * t / place.size : b * t; }
  /// The shape of the residual stream's tensors: [B, T, C], or [rows(), C] with sp.
  Shape stream_shape() const {
    return sp ? Shape{rows(), cfg.d_model} : Shape{b, t, cfg.d_model};
  }
  int64_t heads() const { return cfg.n_head / place.size; }
  int64_t kv_heads() const { return cfg.n_kv_head / place.size; }
  int64_t ff() const { return cfg.d_ff / place.size; }
  int64_t vocab_cols() const { return cfg.padded_vocab() / place.size; }
  int64_t vocab_lo() const { return vocab_cols() * place.rank; }
  /// A row-parallel bias: added by rank 0 only (the group's sum then holds it once).
  Tensor once(const Tensor& bias) const { return place.rank == 0 ? bias : Tensor(); }
  void sum_over_group(const Tensor& x) const {
    if (tp) tp->all_reduce(x);
  }
  /// `whole` holds this rank's partial sums of whole rows (a row-parallel product's output, a
  /// column-parallel product's input gradient); `mine` becomes the group's sum of this rank's
  /// rows (sp: a reduce-scatter), or, without sp (whole is mine), of all of them.
  void sum_rows(const Tensor& whole, const Tensor& mine) const {
    if (!tp) return;
    if (sp) tp->reduce_scatter(whole.view({-1}), mine.view({-1}));
    else tp->all_reduce(mine);
  }
  /// sp: `whole` becomes every rank's rows `part`, in order (an all-gather). Else nothing.
  void gather_rows(const Tensor& part, const Tensor& whole) const {
    if (sp) tp->all_gather(part.view({-1}), whole.view({-1}));
  }
};

/// Incremental decoding (Transformer::decode, what generate() runs): a batch-1 window of W
/// positions whose rows [r0, r1) one call computes, each block reading the q, k and v of the
/// rows before from its cache. The buffers below hold W rows and are shared by the blocks (a
/// call uses its first n = r1 - r0): the stream's parts alternate so that a block's outputs
/// never overwrite its inputs (x is the previous fcproj, r its resid2).
struct DecodeActs {
  Tensor emb;                                  // [W, C] the embedding's rows
  Tensor resid, attproj, resid2, fcproj;       // [W, C]
  Tensor ln1, ln2, mean, rstd;                 // [W, C], [W, C], [W], [W]
  Tensor q;                                    // [W, H, D] the rows' queries (zeroed first)
  Tensor atty, lse;                            // [W, H, D], [H·W]
  Tensor fch, act;                             // [W, F or 2F], [W, F]
  Tensor logits;                               // [1, Vp] the last row's
};
DecodeActs plan_decode(const Ctx& c, int64_t window);
/// One block over the rows [r0, r0 + n) (c.t = n, c.b = 1) of the window: x + r its input
/// rows (r undefined: x is h_l); writes those rows' k and v (after RoPE, at positions r0 ..)
/// into `cache` [1, W, 2·Hkv, D] and their queries into a.q, and leaves the block's output in
/// a.fcproj and a.resid2 (rows [0, n)). The rows attend causally over the cache's first
/// `keys` rows with `documents` (their bounds, [2, 1, keys], or undefined): from r0 = 0 with
/// attention() (keys >= n: the rows past n hold finite values that the mask keeps out, and
/// a.q's rows past n too), after that with attention_decode() (keys = r0 + n: the new rows
/// only, against every cached key).
void block_decode(const Ctx& c, const UnitWeights& w, const DecodeActs& a, const Tensor& cache,
                  const Tensor& x, const Tensor& r, int64_t r0, int64_t keys,
                  const Tensor& documents);
/// The head over the last of the n rows x + r: a.logits [1, Vp].
void head_decode(const Ctx& c, const UnitWeights& w, const Tensor& lm_head, const DecodeActs& a,
                 const Tensor& x, const Tensor& r);

/// The backward's gradient scratch (the shared activations come with the blocks that need them).
BlockScratch plan_scratch(const Ctx& c);
/// One block's activations: what it keeps in its own buffers, the rest in scratch.acts.
BlockActs plan_block(const Ctx& c, Keep keep, BlockScratch& scratch);
HeadActs plan_head(const Ctx& c);

/// Block forward: `x` + `r` is its input h_l (r undefined: x is h_l, stored as the input
/// without a copy); a block's output is (fcproj, resid2), the next one's x and r.
void block_forward(const Ctx& c, const UnitWeights& w, BlockActs& a, const Tensor& x,
                   const Tensor& r);
/// Before a block's backward: what it did not keep, computed again from what it kept.
void block_recompute(const Ctx& c, const UnitWeights& w, BlockActs& a);
/// Block backward: s.d_resid holds d h_{l+1} on entry and d h_l on return; g: the gradients
/// (added to).
void block_backward(const Ctx& c, const UnitWeights& w, const UnitWeights& g, BlockActs& a,
                    BlockScratch& s);

/// Head forward: the final norm of x + r and the logits. lm_head: the head's or the tied wte.
void head_forward(const Ctx& c, const UnitWeights& w, const Tensor& lm_head, HeadActs& a,
                  const Tensor& x, const Tensor& r);
/// Head backward from dlogits (in a.logits): adds to g's lnf and to dlm_head; writes d h_L.
void head_backward(const Ctx& c, const UnitWeights& w, const Tensor& lm_head,
                   const UnitWeights& g, const Tensor& dlm_head, HeadActs& a,
                   const Tensor& d_resid, const Tensor& d_ln);

}  // namespace nuri::model
