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
def test_one_instance_grids_on_edge_shapes(
    tmp_path: Path, shape: tuple[int, int], zero: bool
) -> None:
    """A single instance is a grid of one; degenerate shapes and all-zero weights still draw."""
    rng = np.random.default_rng(0)
    W = np.zeros(shape) if zero else rng.normal(size=shape)
    b = np.zeros(shape[0]) if zero else rng.normal(size=shape[0]) * 0.1
    norms, interference, _ = stats(W)
    out = [
        plots.plot_wtw_grid(W[None], b[None], ["one"], tmp_path / "wtw.png", title="wtw"),
        plots.plot_feature_norms_grid(
            norms[None], interference[None], ["one"], tmp_path / "norms.png", title="n"
        ),
        plots.plot_neuron_stack_grid(W[None], ["one"], tmp_path / "stack.png", title="stack"),
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


@pytest.mark.parametrize(("m", "zero"), [(1, False), (2, True), (3, False)])
def test_grid_plots(tmp_path: Path, m: int, zero: bool) -> None:
    """The per-run grid figures (one file per quantity across instances)."""
    rng = np.random.default_rng(2)
    k, n = 5, 6
    W = np.zeros((k, n, m)) if zero else rng.normal(size=(k, n, m))
    b = rng.normal(size=(k, n)) * 0.1
    s = [stats(w) for w in W]
    titles = [f"p={p:g}" for p in np.geomspace(1, 0.01, k)]
    out = [
        plots.plot_wtw_grid(W, b, titles, tmp_path / "wtw.png"),
        plots.plot_feature_norms_grid(
            np.stack([x[0] for x in s]), np.stack([x[1] for x in s]), titles, tmp_path / "n.png"
        ),
        plots.plot_neuron_stack_grid(W, titles, tmp_path / "stack.png"),
        plots.plot_adversarial(
            np.geomspace(1, 0.01, k),
            rng.uniform(0.5, 3, k),
            rng.uniform(0, 1, k),
            rng.uniform(1, 3, k),
            tmp_path / "adv.png",
        ),
        plots.plot_dynamics(
            np.arange(7) * 10,
            rng.uniform(0, 1, (7, 2, n)),
            rng.uniform(0.1, 1, (7, 2)),
            titles[:2],
            tmp_path / "dyn.png",
        ),
    ]
    if m in (2, 3):
        importance = np.tile(0.9 ** np.arange(n), (k, 1))
        represented = np.linalg.norm(W, axis=-1) > 0.5
        out.append(
            plots.plot_geometry_grid(W, importance, represented, titles, tmp_path / "geo.png")
        )
    else:
        with pytest.raises(ValueError, match="n_hidden 2 or 3"):
            plots.plot_geometry_grid(W, W[..., 0], W[..., 0] > 0, titles, tmp_path / "geo.png")
    for path in out:
        assert_png(path)


@pytest.mark.parametrize(("k", "n"), [(1, 3), (7, 20), (16, 100)])
def test_hand_laid_out_figures_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, k: int, n: int
) -> None:
    """The figures placed by hand (not by a layout engine) keep every label on the canvas, no
    panel's title or tick labels run into another panel or the colour bar."""
    checked: list[str] = []

    def check_then_save(fig, path, tight):
        assert fig.get_layout_engine() is None and tight is False  # no extra layout draw
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        canvas = fig.bbox
        box = fig.get_tightbbox(renderer).transformed(fig.dpi_scale_trans)  # pixels
        assert box.x0 >= -1 and box.y0 >= -1, path
        assert box.x1 <= canvas.x1 + 1 and box.y1 <= canvas.y1 + 1, path
        if Path(path).stem in ("wtw", "norms"):  # the grids: panels and a colour bar
            boxes = [ax.get_tightbbox(renderer) for ax in fig.axes]
            for i, a in enumerate(boxes):
                for b in boxes[i + 1 :]:
                    assert (
                        a.intersection(a, b) is None
                        or min(a.intersection(a, b).width, a.intersection(a, b).height) <= 1
                    ), path
        checked.append(Path(path).name)
        save(fig, path, tight)

    save = plots.save_figure
    monkeypatch.setattr(plots, "save_figure", check_then_save)
    rng = np.random.default_rng(3)
    W = rng.normal(size=(k, n, 2))
    b = rng.normal(size=(k, n)) * 0.1
    s = [stats(w) for w in W]
    titles = [
        f"p={p:.3g}, importance={j % 4}, repeat={j % 2}"
        for j, p in enumerate(np.geomspace(1, 0.001, k))
    ]
    norms, interference, dims = (np.stack([x[i] for x in s]) for i in range(3))
    plots.plot_wtw_grid(W, b, titles, tmp_path / "wtw.png")
    plots.plot_feature_norms_grid(norms, interference, titles, tmp_path / "norms.png")
    prob = np.geomspace(1, 0.001, k)
    plots.plot_dimensionality(prob, dims, 2 / (W**2).sum(axis=(1, 2)), tmp_path / "d.png", "t")
    plots.plot_adversarial(
        prob,
        rng.uniform(0.5, 3, k),
        rng.uniform(0, 1, k),
        rng.uniform(1, 3, k),
        tmp_path / "adv.png",
    )
    assert checked == ["wtw.png", "norms.png", "d.png", "adv.png"]


def test_only_figures_without_a_layout_engine_are_cropped_at_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Constrained-layout grids are saved as their engine fits them and hand-laid ones as
    placed: neither gets bbox_inches="tight" (a whole extra draw)."""
    saved: list[tuple[str, bool]] = []
    save = plots.save_figure

    def spy(fig, path, tight=None):
        crop = fig.get_layout_engine() is None if tight is None else tight
        saved.append((Path(path).stem, crop))
        save(fig, path, tight)

    monkeypatch.setattr(plots, "save_figure", spy)
    W = np.random.default_rng(0).normal(size=(3, 6, 2))
    titles = ["a", "b", "c"]
    plots.plot_neuron_stack_grid(W, titles, tmp_path / "stack.png")
    plots.plot_geometry_grid(W, np.ones((3, 6)), np.ones((3, 6), bool), titles, tmp_path / "g.png")
    plots.plot_wtw_grid(W, np.zeros((3, 6)), titles, tmp_path / "wtw.png")
    assert saved == [("stack", False), ("g", False), ("wtw", False)]
