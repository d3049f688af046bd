"""Packed documents: with a document separator set, attention stays inside documents, so a
document packed after others is computed as if it stood alone (a RoPE model: positions only
shift, and RoPE's scores depend on the distance alone); the trainer's document_mask takes the
separator from nuri tokenize's tokenize.json or from the config, and refuses data without one."""

from __future__ import annotations

import numpy as np
import pytest

import nuri
from conftest import corpus_text

EOT = 256  # the byte tokenizer's end-of-text


def _doc(rng, n):
    return rng.integers(0, 256, size=n).astype(np.int32)  # no end-of-text inside


def test_a_packed_document_is_computed_as_if_it_stood_alone():
    rng = np.random.default_rng(7)
    a = np.append(_doc(rng, 8), EOT).astype(np.int32)  # a document and its end-of-text
    b = _doc(rng, 14)
    c = np.append(_doc(rng, 4), EOT).astype(np.int32)
    packed = np.concatenate([a, c, b])[None, :]  # 9 + 5 + 14 tokens
    model = nuri.Model(nuri.ModelConfig.preset("llama-tiny"), "cpu", 3)
    assert model.document_separator == -1
    whole = model.logits(packed)[0]
    alone_a = model.logits(a[None, :])[0]
    alone_b = model.logits(b[None, :])[0]
    # Without the mask the last document reads the first two: its logits are others.
    assert np.abs(whole[14:] - alone_b).max() > 0.05
    model.document_separator = EOT
    masked = model.logits(packed)[0]
    np.testing.assert_allclose(masked[:9], alone_a, rtol=0, atol=1e-5)  # the first: unchanged
    np.testing.assert_allclose(masked[9:14], model.logits(c[None, :])[0], rtol=0, atol=2e-5)
    np.testing.assert_allclose(masked[14:], alone_b, rtol=0, atol=2e-5)
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
    trainer, model = _trainer(text, document_mask=True, document_separator=EOT)
    assert model.document_separator == EOT
    assert [trainer.step()["loss"] for _ in range(1)] == off
    # With an end-of-text every 20 tokens the mask cuts every row: other losses.
    cut = text.copy()
    cut[19::20] = EOT
    plain = _trainer(cut)[0]
    masked = _trainer(cut, document_mask=True, document_separator=EOT)[0]
    losses = [(plain.step()["loss"], masked.step()["loss"]) for _ in range(2)]
    assert all(abs(p - m) > 1e-4 for p, m in losses), losses
    # Data that records no end-of-text, and no separator given: refused, saying what to set.
    with pytest.raises(nuri.ConfigError, match="train.document_mask: the training data records "
                                               "no end-of-text id"):
        _trainer(text, document_mask=True)


def test_document_mask_takes_the_end_of_text_that_tokenize_records(tmp_path):
    (tmp_path / "a.txt").write_text(corpus_text(6000, seed=4))
    nuri.tokenize([tmp_path / "a.txt"], tmp_path / "shards", val_every=0, progress=False)
    train = nuri.read_data(str(tmp_path / "shards"))  # its train shards
    assert train.end_of_text == EOT
    tc = nuri.TrainConfig()
    tc.steps, tc.micro_batch, tc.seq_len, tc.eval_batches = 1, 2, 16, 1
    tc.document_mask = True
    model = nuri.Model(nuri.ModelConfig.preset("llama-tiny"), "cpu", 1)
    t, v = nuri.split_validation(train)
    assert t.end_of_text == EOT  # a slice keeps it
    nuri.Trainer(model, tc, t, v)
    assert model.document_separator == EOT
