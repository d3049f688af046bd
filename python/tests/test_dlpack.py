"""Tensors cross between nuri, NumPy and PyTorch without copies: each test writes through one
view and reads the change through the other."""
import numpy as np
import pytest

import nuri
from nuri import _C

torch = pytest.importorskip("torch")  # Debian's python3-torch; setup.sh installs it


def test_numpy_into_nuri_and_back_shares_memory():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    t = _C.Tensor.from_dlpack(a)
    assert t.shape == (3, 4) and t.dtype == "f32" and t.device == "cpu"
    t.numpy()[0, 0] = 42.0  # write through nuri's view
    assert a[0, 0] == 42.0
    v = np.from_dlpack(t)  # nuri -> NumPy through DLPack
    a[2, 3] = -5.0
    assert v[2, 3] == -5.0
    assert np.shares_memory(v, a)


def test_torch_into_nuri_and_back_shares_memory():
    x = torch.arange(20, dtype=torch.float32).reshape(4, 5)
    t = _C.Tensor.from_dlpack(x[:, 1:3])  # a strided view
    assert t.shape == (4, 2)
    np.testing.assert_array_equal(t.numpy(), x[:, 1:3].numpy())
    t.numpy()[3, 1] = 100.0
    assert x[3, 2].item() == 100.0
    y = torch.from_dlpack(t)  # nuri -> PyTorch
    y[0, 0] = -1.0
    assert x[0, 1].item() == -1.0


def test_integer_dtypes_and_old_style_capsules():
    ids = torch.tensor([[1, 2, 3]], dtype=torch.int32)
    t = _C.Tensor.from_dlpack(torch.utils.dlpack.to_dlpack(ids))  # a bare capsule
    assert t.dtype == "i32"
    t.numpy()[0, 1] = 7
    assert ids[0, 1].item() == 7
    with pytest.raises(TypeError, match="no dtype"):
        _C.Tensor.from_dlpack(np.zeros(3, dtype=np.complex64))


def test_views_outlive_their_producer():
    t = _C.Tensor.from_dlpack(np.full((2, 2), 3.0, dtype=np.float32))  # the array is gone
    assert t.numpy().sum() == 12.0
    model = _C.Model(_C.ModelConfig.preset("gpt2-tiny"), "cpu", 1)
    wte = model.parameters()["wte.weight"]
    del model  # the view keeps the parameter buffer alive
    assert wte.shape == (320, 64) and np.isfinite(wte).all()


def test_model_parameters_are_writable_zero_copy_views():
    model = _C.Model(_C.ModelConfig.preset("gpt2-tiny"), "cpu", 1)
    x = np.random.default_rng(0).integers(0, 257, (1, 8))
    before = model.forward(x, x)
    params = model.parameters()
    params["ln_f.weight"][:] = 0.0  # the final norm outputs only its bias (0): uniform logits
    after = model.forward(x, x)
    assert before != after
    assert after == pytest.approx(np.log(257), rel=1e-6)
    assert nuri is not None
