import numpy as np
import pytest

from mxr0.optim import warmup_cosine


def test_warmup_then_cosine():
    s = warmup_cosine(100, base=1.0, final=0.1, warmup_steps=10)
    assert len(s) == 100
    assert s[0] == 0.0 and s[9] == pytest.approx(0.9) and s[10] == pytest.approx(1.0)
    assert s[-1] == pytest.approx(0.1)
    assert np.all(np.diff(s[10:]) <= 1e-12)
    assert s[55] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * 45 / 89)))


def test_constant_and_linear():
    assert np.allclose(warmup_cosine(5, 2.0, shape="constant"), 2.0)
    assert np.allclose(warmup_cosine(5, 1.0, 0.0, shape="linear"), [1, 0.75, 0.5, 0.25, 0])
    with pytest.raises(ValueError):
        warmup_cosine(5, 1.0, shape="step")
