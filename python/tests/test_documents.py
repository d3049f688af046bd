"""Packed documents: with a document separator set, attention stays inside documents and a
learned position table is read from each document's start, so a document packed after others
is computed as if it stood alone (GPT-2's learned positions, and RoPE's, whose scores depend on
the distance alone), whether the separator ends its document or begins it; the trainer's document_mask takes the separator from nuri tokenize's tokenize.json
or from the config, and refuses data without one."""

from __future__ import annotations

import numpy as np
import pytest

import nuri
from conftest import corpus_text

EOT = 256  # the byte tokenizer's end-of-text


def _doc(rng, n):
    return rng.integers(0, 256, size=n).astype(np.int32)  # no end-of-text inside


@pytest.mark.parametrize("preset", ["llama-tiny", "gpt2-tiny"])
@pytest.mark.parametrize("starts", [False, True])
def test_a_packed_document_is_computed_as_if_it_stood_alone(starts, preset):
    """Documents `ids EOT` (the separator ends its document) or `EOT ids` (it begins it)."""
    rng = np.random.default_rng(7)
    sep = np.array([EOT], np.int32)
    docs = [_doc(rng, 8), _doc(rng, 4), _doc(rng, 14)]
    docs = [np.concatenate([sep, d]) if starts else np.concatenate([d, sep]) for d in docs]
    packed = np.concatenate(docs)[None, :]
    model = nuri.Model(nuri.ModelConfig.preset(preset), "cpu", 3)
    assert model.document_separator == -1 and not model.document_separator_starts
    whole = model.logits(packed)[0]
    alone = [model.logits(d[None, :])[0] for d in docs]
    cut = np.cumsum([0] + [len(d) for d in docs])
    # Without the mask the last document reads the first two: its logits are others.
    assert np.abs(whole[cut[2]:] - alone[2]).max() > 0.05
    model.document_separator_starts = starts
    model.document_separator = EOT
    masked = model.logits(packed)[0]
    for i in range(3):
        np.testing.assert_allclose(masked[cut[i]:cut[i + 1]], alone[i], rtol=0, atol=2e-5)
    # The separator on the wrong side splits them elsewhere: the later documents change.
    model.document_separator_starts = not starts
    assert np.abs(model.logits(packed)[0][cut[2]:] - alone[2]).max() > 0.05
    with pytest.raises(nuri.Error, match="the separator must be a token id below the "
                                         "vocabulary size 257, or -1"):
        model.document_separator = 257


def _trainer(tokens, **train):
    data = nuri.TokenFile.from_array(tokens.astype(np.uint32), "docs", 257)
    tc = nuri.TrainConfig()
    tc.steps, tc.micro_batch, tc.seq_len, tc.lr, tc.warmup_steps = 3, 4, 32, 3e-3, 1
    tc.eval_batches, tc.seed = 1, 5
    for k, v in train.items():
        setattr(tc, k, v)
    train_part, val = nuri.split_validation(data)
    model = nuri.Model(nuri.ModelConfig.preset("llama-tiny"), "cpu", 5)
    return nuri.Trainer(model, tc, train_part, val), model


def test_the_trainers_document_mask_changes_only_what_crosses_a_separator():
    text = np.frombuffer(corpus_text(8000, seed=2).encode(), np.uint8).astype(np.int64)
    off = [_trainer(text)[0].step()["loss"] for _ in range(1)]
    # Data without a separator: one document a row, so the mask changes no bit.
    trainer, model = _trainer(text, document_mask="end", document_separator=EOT)
    assert model.document_separator == EOT
    assert [trainer.step()["loss"] for _ in range(1)] == off
    # With an end-of-text every 20 tokens the mask cuts every row: other losses.
    cut = text.copy()
    cut[19::20] = EOT
    plain = _trainer(cut)[0]
    masked = _trainer(cut, document_mask="end", document_separator=EOT)[0]
    losses = [(plain.step()["loss"], masked.step()["loss"]) for _ in range(2)]
    assert all(abs(p - m) > 1e-4 for p, m in losses), losses
    # Data that records no end-of-text, and no separator given: refused, saying what to set.
    with pytest.raises(nuri.ConfigError, match="train.document_mask: the training data records "
                                               "no end-of-text id"):
        _trainer(text, document_mask="end")


def test_document_mask_takes_the_end_of_text_that_tokenize_records(tmp_path):
    (tmp_path / "a.txt").write_text(corpus_text(6000, seed=4))
    nuri.tokenize([tmp_path / "a.txt"], tmp_path / "shards", val_every=0, progress=False)
    train = nuri.read_data(str(tmp_path / "shards"))  # its train shards
    assert train.end_of_text == EOT
    tc = nuri.TrainConfig()
    tc.steps, tc.micro_batch, tc.seq_len, tc.eval_batches = 1, 2, 16, 1
    tc.document_mask = "end"
    model = nuri.Model(nuri.ModelConfig.preset("llama-tiny"), "cpu", 1)
    t, v = nuri.split_validation(train)
    assert t.end_of_text == EOT  # a slice keeps it
    trainer = nuri.Trainer(model, tc, t, v)
    assert model.document_separator == EOT and not model.document_separator_starts
    assert np.isfinite(trainer.step()["loss"])
    # A separator given without the mask is refused, saying what to set.
    tc.document_mask, tc.document_separator = "off", EOT
    with pytest.raises(nuri.ConfigError, match="train.document_separator: 256 is given but "
                                               "train.document_mask is off"):
        nuri.Trainer(model, tc, t, v)
