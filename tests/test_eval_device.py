"""Scoring on a chosen device, in bounded blocks: blocked results equal unblocked ones (tiny
forced blocks), the heatmap summary, ``sae eval --accelerator``. CPU only and fast: the run
scored by the CLI tests is written by hand, not trained."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from cli.main import cli, run_cli
from sae import metrics
from sae.activations import write_activation_file
from sae.config import SAERunConfig
from sae.evaluate import (
    evaluate_sae,
    resolve_device,
    scoring_accelerator,
    write_eval,
)
from sae.io import save_sae
from sae.metrics import (
    ReconstructionStats,
    cosine_similarity_matrix,
    evaluate_dictionary,
    score_features,
)
from sae.model import SparseAutoencoder
from sae.run.config_io import config_to_yaml
from sae.run.errors import UsageError


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True)


def dictionary(n_features: int, n_latents: int, d: int, seed: int = 0):
    """Ground truth, a noisy permuted decoder with a zero and a negated row, a represented mask."""
    g = torch.Generator().manual_seed(seed)
    gt = unit(torch.randn(n_features, d, generator=g))
    perm = torch.randperm(n_features, generator=g)
    extra = unit(torch.randn(max(0, n_latents - n_features), d, generator=g))
    dec = torch.cat([gt[perm], extra])[:n_latents] * 2.0
    dec = dec + 0.5 * torch.randn(dec.shape, generator=g) / math.sqrt(d)
    dec[1] = 0.0
    dec[2] = -dec[2]
    represented = torch.rand(n_features, generator=g) < 0.6
    return gt, dec, represented


def assert_scores_equal(a: metrics.DictionaryScores, b: metrics.DictionaryScores) -> None:
    for name, x in a._asdict().items():
        y = getattr(b, name)
        if name == "matching":
            assert x.method == y.method
            np.testing.assert_array_equal(x.feature_to_latent, y.feature_to_latent)
            np.testing.assert_allclose(x.matched_abs_cos, y.matched_abs_cos, rtol=1e-6)
        elif isinstance(x, np.ndarray) and x.dtype.kind == "f":
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
        elif isinstance(x, np.ndarray):
            np.testing.assert_array_equal(x, y)
        else:
            assert x == pytest.approx(y, rel=1e-6, nan_ok=True), name


# ----------------------------------------------------------------------------- cosine scan


@pytest.mark.parametrize("matching", ["auto", "dense", "sparse"])
@pytest.mark.parametrize("shape", [(40, 55), (50, 30)])
def test_blocked_scores_equal_unblocked_and_the_whole_matrix(matching, shape) -> None:
    gt, dec, rep = dictionary(*shape, d=12)
    kw = dict(matching=matching, top_k=4, threshold=0.3)
    whole = evaluate_dictionary(gt, dec, rep, **kw)
    tiny = evaluate_dictionary(gt, dec, rep, chunk_size=3, **kw)
    for a, b in ((whole.all, tiny.all), (whole.represented, tiny.represented)):
        assert_scores_equal(a, b)
    # ... and equal scoring the stored matrix, in blocks of one row or all at once
    cos = cosine_similarity_matrix(gt, dec)
    ids = np.flatnonzero(rep.numpy())
    for chunk in (1, 4096):
        assert_scores_equal(whole.all, score_features(cos, chunk_size=chunk, **kw))
        assert_scores_equal(whole.represented, score_features(cos, ids, chunk_size=chunk, **kw))
    assert whole.to_dict() == pytest.approx(tiny.to_dict(), rel=1e-6, nan_ok=True)


def test_element_budget_caps_the_block(monkeypatch) -> None:
    gt, dec, rep = dictionary(30, 45, d=8)
    ref = evaluate_dictionary(gt, dec, rep)
    monkeypatch.setattr(metrics, "CHUNK_ELEMENTS", 100)  # 2 rows of 45 latents per block
    assert metrics.block_rows(45, 4096) == 2
    capped = evaluate_dictionary(gt, dec, rep)
    assert_scores_equal(ref.all, capped.all)
    assert_scores_equal(ref.represented, capped.represented)


def test_sparse_and_dense_subsets_in_one_scan(monkeypatch) -> None:
    """All features above the dense limit, the represented ones below: one scan feeds both."""
    gt, dec, rep = dictionary(40, 40, d=10)
    cos = cosine_similarity_matrix(gt, dec)
    n_rep = int(rep.sum())
    monkeypatch.setattr(metrics, "DENSE_MATCHING_LIMIT", n_rep * 40)
    ev = evaluate_dictionary(gt, dec, rep, chunk_size=7)
    assert ev.all.matching.method == "sparse" and ev.represented.matching.method == "dense"
    assert_scores_equal(ev.all, score_features(cos, matching="sparse"))
    ids = np.flatnonzero(rep.numpy())
    assert_scores_equal(ev.represented, score_features(cos, ids, matching="dense"))


def test_lazy_cos_is_the_whole_matrix() -> None:
    gt, dec, _ = dictionary(20, 25, d=6)
    ev = evaluate_dictionary(gt, dec, chunk_size=3)
    torch.testing.assert_close(ev.cos, cosine_similarity_matrix(gt, dec), rtol=0, atol=0)


@pytest.mark.parametrize("side", [1000, 7, 4])
def test_heatmap_is_block_means_in_matched_order(side) -> None:
    from sae.plots import matched_latent_order

    gt, dec, _ = dictionary(23, 30, d=8)
    ev = evaluate_dictionary(gt, dec, chunk_size=5, heatmap_side=side)
    h = ev.heatmap
    full = ev.cos.abs().double().numpy()[:, matched_latent_order(ev.all.feature_matched_latent, 30)]
    rb, cb = math.ceil(23 / side), math.ceil(30 / side)
    assert (h.row_block, h.col_block, h.n_features, h.n_latents) == (rb, cb, 23, 30)
    expected = np.array(
        [[full[i : i + rb, j : j + cb].mean() for j in range(0, 30, cb)] for i in range(0, 23, rb)]
    )
    assert h.values.shape == expected.shape
    np.testing.assert_allclose(h.values, expected, rtol=1e-6)
    if side >= 30:  # no pooling: the exact float32 |cos| values
        assert np.array_equal(h.values, np.abs(ev.cos.numpy())[:, matched_latent_order(
            ev.all.feature_matched_latent, 30)])  # fmt: skip


# ----------------------------------------------------------------------------- evaluate_sae


def planted_sae(n_features: int = 20, n_latents: int = 28, d: int = 10, seed: int = 0):
    gt, dec, rep = dictionary(n_features, n_latents, d, seed)
    g = torch.Generator().manual_seed(seed + 1)
    sae = SparseAutoencoder(1, d, n_latents, "april2024", seeds=[0])
    with torch.no_grad():
        sae.W_dec.copy_(dec[None])
        sae.W_enc.copy_((dec / dec.norm(dim=1, keepdim=True).clamp_min(1e-6)).T[None])
        sae.b_enc.fill_(-0.1)
        sae.b_dec.normal_(generator=g)
    batches = []
    for n in (37, 50, 13):
        codes = (torch.rand(n, n_features, generator=g) < 0.2) * torch.rand(
            n, n_features, generator=g
        )
        batches.append((codes @ gt, codes))
    return sae, gt, rep, batches


@pytest.mark.parametrize("with_codes", [True, False])
def test_evaluate_sae_blocked_equals_unblocked(with_codes) -> None:
    sae, gt, rep, batches = planted_sae()
    if not with_codes:
        batches = [(x, None) for x, _ in batches]
    ref = evaluate_sae(sae, gt, iter(batches), rep, device="cpu")
    tiny = evaluate_sae(sae, gt, iter(batches), rep, device="cpu", chunk_size=4)
    assert list(ref["scalars"]) == list(tiny["scalars"])
    for key, value in ref["scalars"].items():  # None: NaN in JSON
        assert value == (None if value is None else pytest.approx(tiny["scalars"][key], 1e-6))
    assert ref["features"] == tiny["features"] and ref["latents"] == tiny["latents"]
    np.testing.assert_array_equal(ref["matching"], tiny["matching"])
    np.testing.assert_array_equal(ref["heatmap"].values, tiny["heatmap"].values)


def test_reconstruction_stats_rows_in_slices_equal_whole_batches() -> None:
    g = torch.Generator().manual_seed(3)
    x, xh = torch.randn(40, 6, generator=g), torch.randn(40, 6, generator=g)
    codes = torch.relu(torch.randn(40, 9, generator=g))
    true = torch.relu(torch.randn(40, 5, generator=g))
    l2f, rep = [0, 1, 2, 3, 4, -1, 0, 1, 2], [True, False, True, True, False]
    whole, sliced = ReconstructionStats(l2f, rep), ReconstructionStats(l2f, rep)
    whole.update(x, xh, codes, true)
    for s in range(0, 40, 3):
        sliced.update(x[s : s + 3], xh[s : s + 3], codes[s : s + 3], true[s : s + 3])
    a, b = whole.results(), sliced.results()
    assert a[0] == pytest.approx(b[0], rel=1e-12)
    assert a[0] == whole.compute() and list(a[1]) == list(whole.arrays())
    for k in a[1]:
        np.testing.assert_allclose(a[1][k], b[1][k], rtol=1e-12)


def test_evaluate_sae_leaves_the_callers_sae_where_it_was() -> None:
    sae, gt, rep, batches = planted_sae()
    before = {k: v.clone() for k, v in sae.state_dict().items()}
    evaluate_sae(sae, gt, iter(batches), rep, device=torch.device("cpu"))
    assert all(torch.equal(before[k], v) for k, v in sae.state_dict().items())


# ----------------------------------------------------------------------------- devices and CLI


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("CPU") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    with pytest.raises(UsageError, match="tpu"):
        resolve_device("tpu")
    assert scoring_accelerator("gpu") == "gpu" and scoring_accelerator("mps") == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("name", ["cuda", "gpu"])
def test_unavailable_accelerator_is_a_usage_error(name) -> None:
    with pytest.raises(UsageError, match=f"'{name}' is not available"):
        resolve_device(name)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """An SAE run written by hand: one SAE, an activation file with ground truth."""
    sae, gt, rep, batches = planted_sae()
    acts = tmp_path / "acts.safetensors"
    x = torch.cat([b[0] for b in batches])
    codes = torch.cat([b[1] for b in batches])
    write_activation_file(acts, x, ground_truth=gt, represented=rep, feature_acts=codes)
    run = tmp_path / "run"
    run.mkdir()
    config = SAERunConfig()
    config.data.activations, config.wandb.enabled = str(acts), False
    (run / "config.yaml").write_text(config_to_yaml(config))
    (run / "run.json").write_text(json.dumps({"instances": ["sae_0"], "wandb": None}))
    save_sae(run / "sae_0", sae.instance_weights(0), {"l1_coefficient": 0.1, "recipe": "april2024"})
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["activations"] == str(acts)
    return run


def test_eval_on_cpu_through_the_cli(run_dir: Path, capsys) -> None:
    code = run_cli(cli.main, ["eval", str(run_dir), "--accelerator", "cpu", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    scalars = json.loads(out)["sae_0"]
    stats = json.loads((run_dir / "sae_0" / "eval_stats.json").read_text())
    assert stats["scalars"] == scalars and scalars["all/n_latents"] == 28
    assert (run_dir / "sae_0" / "cosine_heatmap.png").read_bytes()[:4] == b"\x89PNG"
    # the same numbers as scoring the library way on the CPU
    auto = run_cli(cli.main, ["eval", str(run_dir), "--json"])
    assert auto == 0 and json.loads(capsys.readouterr().out)["sae_0"] == scalars


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_eval_on_absent_cuda_is_one_error_line(run_dir: Path, capsys) -> None:
    before = sorted(p.name for p in (run_dir / "sae_0").iterdir())
    code = run_cli(cli.main, ["eval", str(run_dir), "--accelerator", "cuda"])
    _, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in err
    assert err.splitlines() == [err.strip()] and err.startswith("error: ") and "'cuda'" in err
    assert sorted(p.name for p in (run_dir / "sae_0").iterdir()) == before  # nothing written


def test_write_eval_plots_from_the_summary(tmp_path: Path) -> None:
    sae, gt, rep, batches = planted_sae()
    result = evaluate_sae(sae, gt, iter(batches), rep)
    plots = write_eval(tmp_path, result, title="t")
    assert set(plots) == {"cosine_heatmap", "best_cosine_histogram"}, plots  # not vacuously all()
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in plots.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_scores_equal_cpu_scores() -> None:
    sae, gt, rep, batches = planted_sae(n_features=300, n_latents=420, d=32)
    cpu = evaluate_sae(sae, gt, iter(batches), rep, device="cpu")
    gpu = evaluate_sae(sae, gt, iter(batches), rep, device="cuda", chunk_size=64)
    for key, value in cpu["scalars"].items():
        assert value == (None if value is None else pytest.approx(gpu["scalars"][key], 1e-6)), key
    assert [r["matched_latent"] for r in cpu["features"]] == [
        r["matched_latent"] for r in gpu["features"]
    ]
    assert next(sae.parameters()).device.type == "cpu"  # the caller's SAE stays put
