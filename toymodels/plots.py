"""Matplotlib plots of one trained toy-model instance (Elhage et al. 2022).

Inputs are numpy arrays. A weight matrix ``W`` has shape [n_features, n_hidden]: row i is
feature i's direction in the hidden space (the paper's column W_i; h = x @ W), and ``b`` is
the output bias [n_features]. Every function saves a PNG through ``sae.run.files.save_figure``
and returns the path it wrote.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.collections import PolyCollection
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.font_manager import FontProperties
from matplotlib.textpath import text_to_path
from matplotlib.ticker import FixedLocator, MaxNLocator
from matplotlib.transforms import blended_transform_factory

from sae.run.files import save_figure

# (value, label) guide lines of the feature-dimensionality plot, from the paper's figure.
DIMENSIONALITY_GUIDES: tuple[tuple[float, str], ...] = (
    (1.0, "1 dedicated"),
    (3 / 4, "3/4 tetrahedron"),
    (2 / 3, "2/3 triangle"),
    (1 / 2, "1/2 antipodal (digon)"),
    (2 / 5, "2/5 pentagon"),
    (3 / 8, "3/8 square antiprism"),
    (1 / 3, "1/3"),
)


def _finish(fig: plt.Figure, path: str | os.PathLike, title: str) -> Path:
    """Set the title, save the figure atomically and return the path."""
    by_hand = fig in _BY_HAND  # see "layout by hand" below
    if title:
        if by_hand:
            fig.suptitle(title, y=1.0 - _EDGE / fig.get_figheight(), va="top")
        else:
            fig.suptitle(title)
    save_figure(fig, path, tight=False if by_hand else None)
    return Path(path)


# -- layout by hand ---------------------------------------------------------------------------
# The figures below know their geometry, so they place their axes once from font sizes instead
# of asking constrained layout, which measures every tick label of every panel twice per save
# (about half the drawing time of a grid). Such a figure has no layout engine and is saved
# without bbox_inches="tight": either would cost a whole extra draw at save time (matplotlib
# lays out before printing whenever a figure has any engine, even a placeholder).

_PT = 1.0 / 72.0  # inches per point
_EDGE = 0.08  # inches of blank border around the figure
_TICK = (plt.rcParams["ytick.major.size"] + plt.rcParams["ytick.major.pad"]) * _PT
_LABELPAD = plt.rcParams["axes.labelpad"] * _PT
_TITLEPAD = plt.rcParams["axes.titlepad"] * _PT
_LINE = 1.25 * _PT  # height of a text line per point of font size
_SUPTITLE = 14.0 * _LINE + 2 * _EDGE  # the suptitle ("large") and the gap below it


def _text_width(text: str, size: float | str = "medium") -> float:
    """Width in inches of one line of text at ``size`` (the default font; 5% slack for the
    hinting of the raster backend). Mathtext when the string has a $...$ part."""
    ismath = text.count("$") >= 2
    width, _, _ = text_to_path.get_text_width_height_descent(
        text, FontProperties(size=size), ismath=ismath
    )
    return 1.05 * width * _PT


def _size(size: float | str) -> float:
    """A font size in points (named sizes relative to rcParams["font.size"])."""
    return FontProperties(size=size).get_size_in_points()


def _tick_label_width(axis: matplotlib.axis.Axis) -> float:
    """Inches of the widest major tick label ``axis`` will draw at its current limits, from its
    locator and formatter (no tick objects made)."""
    lo, hi = sorted(axis.get_view_interval())
    span = (hi - lo) * 1e-9
    locs = [x for x in axis.get_majorticklocs() if lo - span <= x <= hi + span]
    labels = axis.get_major_formatter().format_ticks(locs)
    size = plt.rcParams["ytick.labelsize"]
    return max((_text_width(label, size) for label in labels), default=0.0)


_BY_HAND: weakref.WeakSet = weakref.WeakSet()
"""The figures made by ``_figure``: saved as laid out, without the tight crop."""


def _figure(width: float, height: float) -> plt.Figure:
    """A figure whose axes the caller places (no layout engine: see the note above)."""
    fig = plt.figure(figsize=(width, height), layout="none")
    _BY_HAND.add(fig)
    return fig


def _place(fig: plt.Figure, left: float, bottom: float, right: float, top: float) -> list:
    """Axes rectangle [l, b, w, h] in figure fractions from margins in inches."""
    width, height = fig.get_size_inches()
    return [left / width, bottom / height, 1 - (left + right) / width, 1 - (bottom + top) / height]


def plot_dimensionality(
    feature_probability: np.ndarray,
    dimensionality: np.ndarray,
    dims_per_feature: np.ndarray,
    path: str | os.PathLike,
    title: str = "",
) -> Path:
    """Scatter of per-feature D_i against 1/(1−S), with D* = m/‖W‖_F² and geometry guides."""
    dim = np.atleast_2d(np.asarray(dimensionality, dtype=float))
    with np.errstate(divide="ignore"):
        x = 1.0 / np.asarray(feature_probability, dtype=float)
    x_inst = x.reshape(dim.shape[0], -1).mean(axis=1)
    x_feat = np.broadcast_to(x.reshape(dim.shape[0], -1), dim.shape)
    d_star = np.asarray(dims_per_feature, dtype=float).ravel()
    fig = _figure(8.0, 5.0)
    # Margins from what sits there: y label and tick labels (0.0 to 1.0) on the left, the log
    # tick labels (10^k) and x label below, the guide labels right, the legend and title above.
    # Guide labels at x = 1.01 of an axes about 6.5 in wide.
    guide = 0.01 * 6.5 + max(_text_width(label, 7.5) for _, label in DIMENSIONALITY_GUIDES)
    ax = fig.add_axes(
        _place(
            fig,
            left=_EDGE + 1.4 * _LINE * 10 + _LABELPAD + _text_width("0.0") + _TICK,
            bottom=_EDGE + _LINE * 10 + _LABELPAD + 1.4 * _LINE * 10 + _TICK,
            right=_EDGE + guide,
            top=_EDGE + (_SUPTITLE if title else 0.0) + 2.2 * _LINE * 8,  # legend: 1 row
        )
    )
    ax.set_xscale("log")
    ok = np.isfinite(dim) & np.isfinite(x_feat) & (x_feat > 0)
    zero = ok & (dim < 1e-2)
    ax.scatter(x_feat[zero], dim[zero], s=8, color="0.75", alpha=0.3, label=r"$D_i \approx 0$")
    ax.scatter(
        x_feat[ok & ~zero],
        dim[ok & ~zero],
        s=14,
        color="tab:blue",
        alpha=0.6,
        label=r"$D_i$ per feature",
    )
    order = np.argsort(x_inst)
    line_ok = np.isfinite(x_inst[order]) & np.isfinite(d_star[order]) & (x_inst[order] > 0)
    ax.plot(
        x_inst[order][line_ok],
        d_star[order][line_ok],
        color="black",
        linewidth=1.5,
        marker="." if line_ok.sum() < 3 else None,
        label=r"$D^* = m\,/\,\|W\|_F^2$",
    )
    trans = blended_transform_factory(ax.transAxes, ax.transData)
    label_y = 2.0
    for value, label in DIMENSIONALITY_GUIDES:  # descending; nudge close labels apart
        ax.axhline(value, color="0.55", linestyle="--", linewidth=0.7, zorder=0)
        label_y = min(value, label_y - 0.045)
        ax.text(1.01, label_y, label, transform=trans, fontsize=7.5, color="0.3", va="center")
    ax.set_ylim(-0.03, 1.1)
    ax.set_xlabel("1 / (1 − S)  (1 / feature probability)")
    ax.set_ylabel(r"feature dimensionality $D_i$")
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=3, fontsize=8, frameon=False)
    return _finish(fig, path, title)


PHASE_COLORS = {"not_represented": "#9e9e9e", "dedicated": "#1f77b4", "superposition": "#d62728"}
"""Colours of the phase labels: dropped grey, a dimension of its own blue, shared red."""


def plot_phase_diagram(record: dict, path: str | os.PathLike, title: str = "") -> Path:
    """The paper's phase diagram: trained labels (dots) at each (density, r) point over the
    closed-form regions (shaded) and their boundaries (lines). ``record`` is ``phase.json``."""
    from toymodels.phase import SOLUTIONS, closed_form_winner

    r = np.asarray(record["r"], dtype=float)
    density = np.asarray(record["density"], dtype=float)
    n = int(record["n_features"])
    fine_r = np.geomspace(r.min() / 1.3, r.max() * 1.3, 300)
    fine_p = np.geomspace(density.min() / 1.3, min(1.0, density.max() * 1.3), 300)
    best, labels = closed_form_winner(n, fine_r[:, None], fine_p[None, :])
    label_index = {name: k for k, name in enumerate(PHASE_COLORS)}
    shade = np.vectorize(label_index.get)(labels).astype(float)
    fig, ax = plt.subplots(figsize=(6.4, 5.2), layout="constrained")
    ax.set(xscale="log", yscale="log")
    cmap = ListedColormap(list(PHASE_COLORS.values()))
    ax.pcolormesh(fine_p, fine_r, shade, cmap=cmap, vmin=-0.5, vmax=2.5, alpha=0.18, shading="auto")
    # Boundaries between closed-form solutions (also between two "dedicated" ones in 3-in-2).
    ax.contour(
        fine_p,
        fine_r,
        best.astype(float),
        levels=np.arange(len(SOLUTIONS[n]) - 1) + 0.5,
        colors="black",
        linewidths=1.0,
    )
    trained = np.asarray(record["trained"], dtype=object)
    closed = np.asarray(record["closed_form"], dtype=object)
    P, R = np.meshgrid(density, r)
    for name, color in PHASE_COLORS.items():
        hit = trained == name
        ax.scatter(P[hit], R[hit], s=70, color=color, edgecolor="black", linewidth=0.6, label=name)
    miss = trained != closed
    if miss.any():
        ax.scatter(
            P[miss],
            R[miss],
            s=170,
            facecolor="none",
            edgecolor="black",
            linewidth=1.2,
            label="trained ≠ closed form",
        )
    ax.set_xlim(fine_p.max(), fine_p.min())  # dense on the left, like the paper
    ax.set_xlabel("feature density 1 − S (all features)")
    ax.set_ylabel("importance r of the extra feature (others 1)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    ax.text(
        1.02,
        0.02,
        "shaded / lines:\nclosed form\ndots: trained",
        transform=ax.transAxes,
        fontsize=8,
        va="bottom",
    )
    return _finish(fig, path, title)


# -- grid figures: one file per quantity across the instances of a run ------------------------


def _grid_shape(count: int) -> tuple[int, int]:
    """Rows and columns of a near-square grid of ``count`` panels."""
    cols = int(np.ceil(np.sqrt(count)))
    return int(np.ceil(count / cols)), cols


def _fixed_grid(
    count: int,
    box: tuple[float, float],
    pad: tuple[float, float, float, float],
    colorbar: tuple[float, float, float, float] | None = None,
    **kw: object,
) -> tuple[plt.Figure, list, plt.Axes | None]:
    """A figure of ``count`` panels in a near-square grid, placed by hand. ``box`` (w, h) is
    the axes box of a panel in inches and ``pad`` (left, bottom, right, top) the room around it
    for its tick labels and title. ``colorbar`` (width, room, shrink, label): a colour bar of
    ``width`` inches in ``room`` inches right of the grid, as tall as ``shrink`` times the
    panel rows, or as its label of ``label`` inches if taller (up to the rows). Returns the
    figure, the panel axes and the colour-bar axes (None without one). ``kw`` goes to every
    ``add_axes``; ``sharex``/``sharey`` True share the first panel's axis."""
    rows, cols = _grid_shape(count)
    left, bottom, right, top = pad
    cell = (left + box[0] + right, bottom + box[1] + top)
    width = 2 * _EDGE + cols * cell[0] + (colorbar[1] if colorbar else 0.0)
    height = 2 * _EDGE + _SUPTITLE + rows * cell[1]
    if colorbar:  # room for the colour bar's label, beside the suptitle if need be
        height = max(height, 2 * _EDGE + 0.1 + colorbar[3])
    fig = _figure(width, height)
    axes: list = []
    for k in range(count):
        r, c = divmod(k, cols)
        x0 = _EDGE + c * cell[0] + left
        y0 = height - _EDGE - _SUPTITLE - (r + 1) * cell[1] + bottom
        share = {key: axes[0] for key in ("sharex", "sharey") if axes and kw.get(key)}
        rest = {key: v for key, v in kw.items() if key not in ("sharex", "sharey")}
        rect = (x0 / width, y0 / height, box[0] / width, box[1] / height)
        axes.append(fig.add_axes(rect, **share, **rest))
    cax = None
    if colorbar:
        bar_w, _, shrink, label = colorbar
        lo = height - _EDGE - _SUPTITLE - rows * cell[1] + bottom
        hi = height - _EDGE - _SUPTITLE - top
        bar_h = max(shrink * (hi - lo), min(label, hi - lo))
        x0 = _EDGE + cols * cell[0] + 0.1
        # Centred on the panels, its label (centred on it) inside the figure.
        y0 = (lo + hi - bar_h) / 2
        y0 = float(np.clip(y0, _EDGE + (label - bar_h) / 2, height - _EDGE - (label + bar_h) / 2))
        cax = fig.add_axes((x0 / width, y0 / height, bar_w / width, bar_h / height))
    return fig, axes, cax


def _colorbar_room(bar_width: float, tick_labels: list[str], label_lines: float) -> float:
    """Inches right of a grid for its colour bar: gap, bar, ticks, tick labels, axis label of
    ``label_lines`` lines (medium font) and the figure edge."""
    labels = max(_text_width(t) for t in tick_labels)
    text = label_lines * _LINE * _size("medium")
    return 0.1 + bar_width + _TICK + labels + _LABELPAD + text + 0.05


def _grid(count: int, panel: tuple[float, float], **kw: object) -> tuple[plt.Figure, np.ndarray]:
    """A figure of ``count`` panels in a near-square grid (unused panels hidden), laid out by
    constrained layout (for panels whose tick labels depend on the data)."""
    rows, cols = _grid_shape(count)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(panel[0] * cols, panel[1] * rows),
        layout="constrained",
        squeeze=False,
        **kw,
    )
    for ax in axes.flat[count:]:
        fig.delaxes(ax)  # hidden 3-D axes break constrained layout's bounding boxes
    return fig, axes.flat[:count]


def plot_wtw_grid(
    W: np.ndarray, b: np.ndarray, titles: list[str], path: str | os.PathLike, title: str = ""
) -> Path:
    """W Wᵀ of every instance with its bias as a last column (after a gap); each panel has
    its own symmetric colour scale, printed in its title."""
    W = np.asarray(W, dtype=float)
    b = np.asarray(b, dtype=float)
    n = W.shape[1]
    label = "W Wᵀ and b (÷ panel max)"
    title_lines = 2 * _LINE * _size(8) + _TITLEPAD
    box_w = max(2.2, max((_text_width(t, 8) for t in titles), default=0.0))
    box = (box_w, box_w * n / (n + 2))  # the image's aspect: n rows, n + 2 columns
    bar_w = 0.22
    room = _colorbar_room(bar_w, ["−0.75"], 1)
    fig, axes, cax = _fixed_grid(
        len(W), box, (0.1, 0.1, 0.1, title_lines), colorbar=(bar_w, room, 0.6, _text_width(label))
    )
    for ax, Wk, bk, name in zip(axes, W, b, titles):
        gram = Wk @ Wk.T
        image = np.concatenate([gram, np.full((n, 1), np.nan), bk[:, None]], axis=1)
        vmax = float(np.nanmax(np.abs(image), initial=0.0)) or 1.0
        ax.imshow(image, cmap="RdBu", vmin=-vmax, vmax=vmax, interpolation="nearest")
        # y given: the title sits on the box, not fitted to (absent) tick labels at each draw.
        ax.set_title(f"{name}\n|max| {vmax:.2g}", fontsize=8, y=1.0)
        ax.set(xticks=[], yticks=[])
    fig.colorbar(ScalarMappable(Normalize(-1, 1), "RdBu"), cax=cax, label=label)
    return _finish(fig, path, title or "W Wᵀ | b per instance")


def plot_feature_norms_grid(
    norms: np.ndarray,
    interference: np.ndarray,
    titles: list[str],
    path: str | os.PathLike,
    title: str = "",
) -> Path:
    """‖W_i‖ bars (feature 0 on top) coloured by interference, one panel per instance."""
    norms = np.asarray(norms, dtype=float)
    interference = np.nan_to_num(np.asarray(interference, dtype=float), nan=0.0)
    n = norms.shape[1]
    cmap, norm = plt.get_cmap("inferno"), Normalize(0.0, 1.0, clip=True)
    count = len(norms)
    cols = _grid_shape(count)[1]
    # Every panel has the same scales, so they share their axes: y tick labels (feature index)
    # on the left column, x tick labels (norm) under the lowest panel of each column only.
    pad = (
        _TICK + _text_width(str(max(n - 1, 0)), 7) + 0.08,  # y tick labels
        _TICK + _LINE * 7,  # x tick labels
        0.12,
        _TITLEPAD + _LINE * 8,  # title
    )
    label = r"interference $\sum_{j\neq i}(\hat{W}_i\cdot W_j)^2$"
    box = (
        max(2.4 - pad[0] - pad[2], max((_text_width(t, 8) for t in titles), default=0.0)),
        float(np.clip(0.12 * n + 1.2, 2.0, 6.0)) - pad[1] - pad[3],
    )
    bar_w = 0.25
    room = _colorbar_room(bar_w, ["0.0"], 2.2)  # the label's sum has a subscript line
    fig, axes, cax = _fixed_grid(
        count, box, pad, (bar_w, room, 1.0, _text_width(label)), sharex=True, sharey=True
    )
    top = max(1.1, float(np.nanmax(norms, initial=0.0)) * 1.05)
    axes[0].set(ylim=(n - 0.5, -0.5), xlim=(0.0, top))  # shared by all panels
    axes[0].yaxis.set_major_locator(MaxNLocator(integer=True))  # feature indices
    for k, (ax, nk, ik, name) in enumerate(zip(axes, norms, interference, titles)):
        # One collection of n rectangles: as drawn by barh, without n patches to lay out.
        y = np.arange(n)
        bars = [[(0, i - 0.4), (w, i - 0.4), (w, i + 0.4), (0, i + 0.4)] for i, w in zip(y, nk)]
        ax.add_collection(
            PolyCollection(bars, facecolors=cmap(norm(ik)), edgecolors="0.5", linewidths=0.3)
        )
        ax.axvline(1.0, color="0.6", linestyle=":", linewidth=0.8)
        ax.set_title(name, fontsize=8, y=1.0)  # y given: not fitted at each draw (ticks below)
        ax.tick_params(labelsize=7, labelleft=k % cols == 0, labelbottom=k + cols >= count)
    for axis in (axes[0].xaxis, axes[0].yaxis):
        # The locator's ticks, kept only where they show: no tick objects made for the ones
        # outside the limits, in every panel.
        lo, hi = sorted(axis.get_view_interval())
        locs = axis.get_majorticklocs()
        axis.set_major_locator(FixedLocator(locs[(locs >= lo) & (locs <= hi)]))
    cbar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=cax, extend="max")
    cbar.set_label(label)
    return _finish(fig, path, title or r"feature norms $\|W_i\|$ (feature 0 on top)")


def plot_neuron_stack_grid(
    W: np.ndarray, titles: list[str], path: str | os.PathLike, title: str = ""
) -> Path:
    """Per-neuron stacked bars of feature weights (positive up, negative down, neurons sorted
    by their strongest feature), one panel per instance."""
    W = np.asarray(W, dtype=float)
    n_features, n_hidden = W.shape[1:]
    fig, axes = _grid(len(W), (float(np.clip(0.3 * n_hidden + 1.5, 2.5, 10.0)), 2.6))
    colors = plt.get_cmap("viridis")(np.linspace(0.0, 0.92, max(n_features, 2)))[:n_features]
    for ax, Wk, name in zip(axes, W, titles):
        _draw_neuron_stack(ax, Wk, colors)
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=6)
    sm = ScalarMappable(norm=Normalize(-0.5, n_features - 0.5), cmap=ListedColormap(colors))
    fig.colorbar(sm, ax=list(axes), pad=0.02).set_label("feature i (0 = most important)")
    return _finish(fig, path, title or "weights per hidden neuron (sorted by strongest feature)")


def _draw_neuron_stack(ax: plt.Axes, W: np.ndarray, colors: np.ndarray) -> None:
    n_hidden = W.shape[1]
    order = np.argsort(np.argmax(np.abs(W), axis=0), kind="stable")
    Ws = W[:, order]
    pos, neg = np.clip(Ws, 0, None), np.clip(Ws, None, 0)
    polys, facecolors = [], []
    for heights in (pos, neg):
        bottoms = np.vstack([np.zeros(n_hidden), np.cumsum(heights, axis=0)[:-1]])
        for i, j in zip(*np.nonzero(heights)):
            x0, y0, h = j - 0.4, bottoms[i, j], heights[i, j]
            polys.append([(x0, y0), (x0 + 0.8, y0), (x0 + 0.8, y0 + h), (x0, y0 + h)])
            facecolors.append(colors[i])
    ax.add_collection(PolyCollection(polys, facecolors=facecolors, edgecolors="white", lw=0.3))
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_xlim(-0.6, n_hidden - 0.4)
    lo, hi = float(neg.sum(axis=0).min(initial=0.0)), float(pos.sum(axis=0).max(initial=0.0))
    pad = 0.05 * (hi - lo) if hi > lo else 1.0
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_xticks([])


def plot_geometry_grid(
    W: np.ndarray,
    importance: np.ndarray,
    represented: np.ndarray,
    titles: list[str],
    path: str | os.PathLike,
    title: str = "",
) -> Path:
    """The paper's intro / pentagon pictures: every feature direction W_i as an arrow from the
    origin (m = 2 in the plane, m = 3 in a 3-D projection), coloured by importance; features
    the model does not represent are grey, dashed and marked ×. One panel per instance."""
    W = np.asarray(W, dtype=float)
    importance = np.asarray(importance, dtype=float)
    represented = np.asarray(represented, dtype=bool)
    m = W.shape[2]
    if m not in (2, 3):
        raise ValueError(f"geometry figures need n_hidden 2 or 3, got {m}")
    kw = {"subplot_kw": {"projection": "3d"}} if m == 3 else {}
    fig, axes = _grid(len(W), (2.6, 2.6), **kw)
    lo, hi = float(importance.min()), float(importance.max())
    norm = Normalize(lo, hi if hi > lo else lo + 1.0)
    cmap = plt.get_cmap("viridis")
    reach = max(1.0, float(np.abs(W).max(initial=0.0))) * 1.1
    for ax, Wk, Ik, Rk, name in zip(axes, W, importance, represented, titles):
        for i in np.argsort(Ik):  # most important drawn last, on top
            color = cmap(norm(Ik[i])) if Rk[i] else "0.6"
            style = "-" if Rk[i] else "--"
            ax.plot(*[[0.0, c] for c in Wk[i]], style, color=color, linewidth=1.6)
            ax.scatter(*[[c] for c in Wk[i]], color=color, s=14, marker="o" if Rk[i] else "x")
        limits = (-reach, reach)
        ax.set(xlim=limits, ylim=limits, xticks=[], yticks=[])
        if m == 3:
            ax.set(zlim=limits, zticks=[])
            ax.view_init(elev=22, azim=35)
        else:
            ax.set_aspect("equal")
            ax.axhline(0, color="0.85", linewidth=0.5, zorder=0)
            ax.axvline(0, color="0.85", linewidth=0.5, zorder=0)
        ax.set_title(name, fontsize=8)
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=list(axes), shrink=0.7).set_label(
        "importance (grey ×: not represented)"
    )
    return _finish(fig, path, title or "feature directions W_i")


def plot_adversarial(
    feature_probability: np.ndarray,
    features_per_dimension: np.ndarray,
    vulnerability: np.ndarray,
    amplification: np.ndarray,
    path: str | os.PathLike,
    title: str = "",
) -> Path:
    """The analytic attack per instance against 1/(1 − S) and against 1/D* (features per
    dimension, ‖W‖_F² / m): the relative harm of the worst attack (red, left axis) and how far a
    unit attack moves the outputs (blue, right axis; the grey diagonal is y = 1/D*)."""
    p = np.asarray(feature_probability, dtype=float)
    fpd = np.asarray(features_per_dimension, dtype=float)
    v = np.asarray(vulnerability, dtype=float)
    amp = np.asarray(amplification, dtype=float)
    width = 10.0
    fig = _figure(width, 3.9)
    # Laid out by hand: the heights are known (tick labels and x label below, title above);
    # the widths are set once the y tick labels (which depend on the data) are known.
    bottom = _EDGE + 1.2 * _LINE * 10 + _LABELPAD + 1.2 * _LINE * 10 + _TICK
    axes = [fig.add_axes(_place(fig, 0.0, bottom, 0.0, _EDGE + _SUPTITLE)) for _ in range(2)]
    twins = []
    for ax, x, label, log in (
        (axes[0], 1.0 / p, "1 / (1 − S)", True),
        (axes[1], fpd, r"features per dimension $1/D^* = \|W\|_F^2 / m$", False),
    ):
        order = np.argsort(x)
        ax.plot(x[order], v[order], "o-", color="tab:red")
        ax.set_xlabel(label)
        ax.set_ylabel("vulnerability: attacked / clean loss − 1", color="tab:red")
        if log:
            ax.set_xscale("log")
        twin = ax.twinx()
        twin.plot(x[order], amp[order], "s--", color="tab:blue", markersize=4)
        twin.set_ylabel("amplification of a unit attack", color="tab:blue")
        if not log:
            lim = [min(1.0, float(np.nanmin(fpd, initial=1.0))), float(np.nanmax(fpd, initial=1.0))]
            twin.plot(lim, lim, color="0.7", linewidth=0.8, zorder=0)
        ax.grid(alpha=0.3)
        twins.append(twin)
    # Each pair's side margins: y label line, label pad, tick labels, ticks (left and right).
    edge = _LINE * 10 + _LABELPAD + _TICK
    sides = [
        (edge + _tick_label_width(a.yaxis), edge + _tick_label_width(t.yaxis))
        for a, t in zip(axes, twins)
    ]
    x0, room = _EDGE, width - 2 * _EDGE - 0.25 - sum(map(sum, sides))  # 0.25 between the pairs
    for ax, twin, (left, right) in zip(axes, twins, sides):
        box = ax.get_position()
        rect = (x0 + left) / width, box.y0, room / 2 / width, box.height
        ax.set_position(rect)
        twin.set_position(rect)
        x0 += left + room / 2 + right + 0.25
    return _finish(fig, path, title or "analytic L2 attack, λ = 0.1 × mean ‖x‖ (active inputs)")


def plot_dynamics(
    steps: np.ndarray,
    dimensionality: np.ndarray,
    loss: np.ndarray,
    titles: list[str],
    path: str | os.PathLike,
    title: str = "",
) -> Path:
    """Feature dimensionality D_i over training (one line per feature) above the loss, one
    column per instance; dashed guides at the polytope values."""
    steps = np.asarray(steps, dtype=float)
    dims = np.asarray(dimensionality, dtype=float)  # [T, instances, n]
    loss = np.asarray(loss, dtype=float)  # [T, instances]
    k = dims.shape[1]
    fig, axes = plt.subplots(
        2,
        k,
        figsize=(3.6 * k, 4.8),
        layout="constrained",
        squeeze=False,
        sharex=True,
        gridspec_kw={"height_ratios": [3, 1]},
    )
    colors = plt.get_cmap("tab20")(np.arange(dims.shape[2]) % 20)
    for j in range(k):
        top, bottom = axes[0, j], axes[1, j]
        for value, _ in DIMENSIONALITY_GUIDES:
            top.axhline(value, color="0.8", linestyle="--", linewidth=0.6, zorder=0)
        for i in range(dims.shape[2]):
            top.plot(steps, dims[:, j, i], color=colors[i], linewidth=0.9)
        top.set(ylim=(-0.03, 1.1), title=titles[j])
        bottom.plot(steps, loss[:, j], color="black", linewidth=1.0)
        bottom.set(yscale="log", xlabel="step")
        if j == 0:
            top.set_ylabel(r"feature dimensionality $D_i$")
            bottom.set_ylabel("loss")
    return _finish(fig, path, title or "learning dynamics")
