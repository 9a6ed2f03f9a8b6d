"""Each toy-model plot writes a valid, non-empty PNG, including degenerate inputs."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from toymodels import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    """The file exists, starts with the PNG signature and has a sane IHDR image size."""
    data = Path(path).read_bytes()
    assert len(data) > 1000
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert 50 <= width <= 5000 and 50 <= height <= 5000


def stats(W: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Feature norms, interference and dimensionality of one instance (paper definitions)."""
    norms = np.linalg.norm(W, axis=1)
    unit = W / np.maximum(norms, 1e-12)[:, None]
    proj2 = (unit @ W.T) ** 2
    total = proj2.sum(axis=1)
    interference = total - np.diag(proj2)
    dim = np.where(total > 1e-12, norms**2 / np.maximum(total, 1e-12), 0.0)
    return norms, interference, dim


CASES = {
    "random": (8, 3),
    "n_hidden_1": (5, 1),
    "one_feature": (1, 2),
}


@pytest.mark.parametrize("shape", CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize("zero", [False, True], ids=["weights", "all_zero"])
def test_instance_plots(tmp_path: Path, shape: tuple[int, int], zero: bool) -> None:
    rng = np.random.default_rng(0)
    W = np.zeros(shape) if zero else rng.normal(size=shape)
    b = np.zeros(shape[0]) if zero else rng.normal(size=shape[0]) * 0.1
    norms, interference, _ = stats(W)
    out = [
        plots.plot_wtw(W, b, tmp_path / "wtw.png", title="wtw"),
        plots.plot_feature_norms(norms, interference, tmp_path / "norms.png", title="n"),
        plots.plot_neuron_stack(W, tmp_path / "stack.png", title="stack"),
    ]
    for path in out:
        assert_png(path)


@pytest.mark.parametrize("n_instances", [1, 4])
@pytest.mark.parametrize("zero", [False, True], ids=["weights", "all_zero"])
def test_plot_dimensionality(tmp_path: Path, n_instances: int, zero: bool) -> None:
    rng = np.random.default_rng(1)
    n_features, n_hidden = 6, 2
    Ws = np.zeros((n_instances, n_features, n_hidden))
    if not zero:
        Ws = rng.normal(size=Ws.shape)
    dims = np.stack([stats(W)[2] for W in Ws])
    with np.errstate(divide="ignore"):
        d_star = n_hidden / (Ws**2).sum(axis=(1, 2))
    prob = np.geomspace(1.0, 0.01, n_instances)
    path = plots.plot_dimensionality(prob, dims, d_star, tmp_path / "sub" / "dim.png", "d")
    assert path == tmp_path / "sub" / "dim.png"
    assert_png(path)


def test_dimensionality_nan_inputs(tmp_path: Path) -> None:
    dims = np.array([[np.nan, 0.5, 0.0], [0.4, 0.4, 0.4]])
    path = plots.plot_dimensionality(
        np.array([0.1, 0.0]), dims, np.array([np.inf, 0.5]), tmp_path / "nan.png"
    )
    assert_png(path)
