"""``sae select``: the ground-truth-free choice of one SAE of a run, selection.json, refusals."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from cli_runs import QUIET, sae_cli, write_yaml
from synthetic import write_planted_file

from cli.main import cli, run_cli
from sae.select import InstanceSignals, choose, knee, mmcs, resolve_auto


def _signals(rows: list[dict]) -> list[InstanceSignals]:
    base = dict(
        name="",
        l1_coefficient=0.1,
        lr=1e-3,
        seed=0,
        d_sae=8,
        explained_variance=0.9,
        l0=1.0,
        dead_fraction=0.0,
        loss=1.0,
        seed_mmcs=None,
        larger_mmcs=None,
        lambda_mmcs=None,
        l0_slope=None,
        ev_knee=None,
    )
    return [InstanceSignals(**(base | {"name": f"sae_{k}"} | r)) for k, r in enumerate(rows)]


def test_knee_and_mmcs_on_known_curves() -> None:
    # A curve flat after x = 2: the knee is there; a straight line has none.
    d = knee([0, 1, 2, 3, 4], [0, 0.5, 1.0, 1.0, 1.0])
    assert max(range(5), key=d.__getitem__) == 2 and d[0] == d[4] == 0
    assert max(knee([0, 1, 2, 3], [0, 1, 2, 3])) < 1e-12
    eye = torch.eye(4)
    assert mmcs(eye, eye) == 1.0
    assert mmcs(eye[:2], eye[2:]) == 0.0
    half = torch.tensor([[1.0, 1.0, 0, 0]]) / math.sqrt(2)
    assert mmcs(half, eye) == pytest.approx(1 / math.sqrt(2))


def test_a_collapsed_sae_is_never_the_knee_or_the_plateau() -> None:
    # EV over log λ: high, then collapsing. Points past the collapse lie far *below* the chord;
    # the knee is the last point above it (λ = 0.1), not the collapsed λ = 10.
    log_l1 = [math.log(v) for v in (0.01, 0.1, 1.0, 10.0, 100.0)]
    d = knee(log_l1, [0.99, 0.95, 0.3, 0.02, 0.0])
    assert max(range(5), key=d.__getitem__) == 1
    # The loss elbow over width is below the chord.
    assert max(range(3), key=knee([0, 1, 2], [1.0, 0.05, 0.0], above=False).__getitem__) == 1
    # Two dead SAEs have a flat L0 (slope 0, the best plateau); a working one must win.
    rows = [
        dict(l1_coefficient=0.1, l0=2.0, explained_variance=0.9, l0_slope=0.5),
        dict(l1_coefficient=10.0, l0=0.0, explained_variance=0.0, l0_slope=0.0),
        dict(l1_coefficient=100.0, l0=0.0, explained_variance=0.0, l0_slope=0.0),
    ]
    assert choose("l0_plateau", _signals(rows)) == 0


def test_width_rules_pick_the_width_where_the_dictionary_stops_growing() -> None:
    # One λ chain: 4, 8, 16 latents. Dead latents appear past 8; the loss stops falling at 8;
    # the 8-latent dictionary is the one the 16-latent one contains.
    rows = [
        dict(d_sae=4, dead_fraction=0.0, loss=2.0, larger_mmcs=0.70, lambda_mmcs=0.5),
        dict(d_sae=8, dead_fraction=0.0, loss=1.0, larger_mmcs=0.99, lambda_mmcs=0.6),
        dict(d_sae=16, dead_fraction=0.4, loss=0.95, larger_mmcs=None, lambda_mmcs=0.9),
    ]
    s = _signals(rows)
    assert choose("dead_onset+lambda_mmcs", s) == 1
    assert choose("loss_elbow+lambda_mmcs", s) == 1
    assert choose("larger_mmcs+lambda_mmcs", s) == 1
    assert choose("lambda_mmcs", s) == 2  # without a width rule: the best λ score anywhere
    assert choose("seed_mmcs", s) is None  # one seed: the rule cannot run
    assert resolve_auto(s) == "lambda_mmcs"  # one λ chain of < 3 values, one seed
    # with a λ knee too, auto keeps the loss-elbow width, then the knee
    knees = _signals([r | {"ev_knee": 0.5} for r in rows[:2]] + [rows[2] | {"ev_knee": 0.9}])
    assert resolve_auto(knees) == "loss_elbow+ev_knee" and choose("loss_elbow+ev_knee", knees) == 1
    assert choose("ev_knee", knees) == 2


def test_auto_takes_the_ev_knee_then_seed_agreement() -> None:
    rows = [
        dict(seed=0, l1_coefficient=0.1, seed_mmcs=0.7, l0_slope=0.1),
        dict(seed=1, l1_coefficient=0.1, seed_mmcs=0.7, l0_slope=0.1),
        dict(seed=0, l1_coefficient=1.0, seed_mmcs=0.95, l0_slope=0.9),
        dict(seed=1, l1_coefficient=1.0, seed_mmcs=0.95, l0_slope=0.9),
    ]
    s = _signals(rows)  # two λ values: no knee
    assert resolve_auto(s) == "seed_mmcs" and choose("seed_mmcs", s) == 2
    assert choose("l0_plateau", s) == 0
    s = _signals([r | {"ev_knee": 0.1 * k} for k, r in enumerate(rows)])
    assert resolve_auto(s) == "ev_knee" and choose("ev_knee", s) == 3


LAMBDAS = [0.003, 0.3, 30.0]


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory) -> tuple[Path, Path]:
    """16 planted features in 8 dims; λ ∈ {0.003 (too small: smeared), 0.3 (recovers them),
    30 (kills most latents)} × 2 seeds, 16 latents: the answer is clearly λ = 0.3."""
    root = tmp_path_factory.mktemp("select")
    data = root / "planted.safetensors"
    write_planted_file(data, n_features=16, d=8, n_rows=20_000, p=0.05, seed=3)
    config = {
        "sae": {"d_sae": 16, "recipe": "constrained", "b_dec_init": "geometric_median"},
        "sweep": {
            "l1_coefficient": [lam for lam in LAMBDAS for _ in (0, 1)],
            "seed": [0, 1] * len(LAMBDAS),
            "lr": [3e-3],
        },
        # no warm-ups, as measured (the defaults have them since the one-pass recipe)
        "train": {"steps": 1500, "batch_size": 256, "log_every": 500, "checkpoint_every": 10**6}
        | {"lr_warmup_steps": 0, "l1_warmup_steps": 0},
        **QUIET,
    }
    out = root / "run"
    path = write_yaml(root / "run.yaml", config)
    args = ["train", "--config", path, "--activations", data, "--out", out]
    assert run_cli(cli.main, [str(a) for a in args]) == 0
    return out, data


@pytest.mark.slow
def test_select_picks_the_planted_answer_and_reports_regret(planted_run, capsys) -> None:
    run, _ = planted_run
    code, out, err = sae_cli(["select", run], capsys)
    assert code == 0, err
    record = json.loads((run / "selection.json").read_text())
    picked = record["signals"]["instances"][record["instance"]]
    assert picked["l1_coefficient"] == 0.3, out
    assert record["method"] == "ev_knee"  # auto: the run has three λ values
    gt = record["ground_truth"]
    assert gt["regret"] == pytest.approx(gt["best"] - gt["chosen"])
    # measured: chosen 0.914, best 0.915 (the other seed of λ = 0.3)
    assert gt["chosen"] > 0.85 and gt["regret"] < 0.02, gt
    # the printed report: the choice and its ground-truth score, the best and the regret
    assert f"selected {record['sae']}" in out
    assert f"regret {gt['regret']:.4f}" in out and f"best {gt['best']:.4f}" in out
    # one width: the width-aware score is MCC scaled by features / alive latents (16 / 16 here)
    wa = gt["width_aware"]
    assert wa["regret"] == pytest.approx(wa["best"] - wa["chosen"]) and wa["regret"] >= 0
    assert wa["chosen"] == pytest.approx(gt["chosen"]) and "width-aware" in out
    # λ = 30 killed most latents; λ = 0.003 reconstructs best yet is not chosen
    worst = [s for s in record["signals"]["instances"] if s["l1_coefficient"] == 30.0]
    assert all(s["dead_fraction"] > 0.5 for s in worst)
    ev = {s["l1_coefficient"]: s["explained_variance"] for s in record["signals"]["instances"]}
    assert ev[0.003] > ev[0.3]


@pytest.mark.slow
def test_selection_json_is_written_atomically_with_its_schema(
    planted_run, capsys, monkeypatch
) -> None:
    run, _ = planted_run
    target = run / "selection.json"
    target.write_text("old")
    replaced = []
    real_replace = os.replace

    def spy(src, dst):  # the whole file exists under a temporary name before the rename
        replaced.append((Path(src), Path(dst), json.loads(Path(src).read_text())))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    code, out, err = sae_cli(["select", run, "--method", "lambda_mmcs", "--json"], capsys)
    assert code == 0, err
    (src, dst, content) = next(r for r in replaced if r[1].name == "selection.json")
    assert dst == target and src.parent == run and src.name.startswith(".selection.json.")
    record = json.loads(target.read_text())
    assert record == content == json.loads(out)
    assert isinstance(record["instance"], int) and record["method"] == "lambda_mmcs"
    assert record["sae"] == f"sae_{record['instance']}"
    assert set(record["signals"]) == {"instances", "widths"}
    assert len(record["signals"]["instances"]) == 2 * len(LAMBDAS)
    assert {"seed_mmcs", "lambda_mmcs", "l0_slope", "explained_variance", "l0"} <= set(
        record["signals"]["instances"][0]
    )
    assert record["choices"]["seed_mmcs"] is not None and "ground_truth" in record
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_select_refuses_a_folder_without_finished_saes(tmp_path, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err = sae_cli(["select", empty], capsys)
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        f"error: {empty} holds no finished SAEs to select from (train them first: sae train)"
    ]
    # A run record whose SAE folders are gone is refused the same way.
    (empty / "run.json").write_text(json.dumps({"instances": ["sae_0"]}))
    code, _, err = sae_cli(["select", empty], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no finished SAEs" in err
    assert not (empty / "selection.json").exists()


@pytest.mark.slow
def test_select_on_a_width_sweep_finds_the_planted_width(tmp_path, capsys) -> None:
    """16 planted features; widths 8 / 16 / 32 × λ 0.003 / 0.3 / 30 in one batched run: the
    loss elbow says 16 features and auto picks the 16-latent SAE at λ = 0.3."""
    data = tmp_path / "planted.safetensors"
    write_planted_file(data, n_features=16, d=8, n_rows=20_000, p=0.05, seed=3)
    grid = [(lam, w) for lam in LAMBDAS for w in (8, 16, 32)]
    config = {
        "sae": {"d_sae": None, "recipe": "constrained", "b_dec_init": "geometric_median"},
        "sweep": {
            "l1_coefficient": [g[0] for g in grid],
            "d_sae": [g[1] for g in grid],
            "lr": [3e-3],
        },
        "train": {"steps": 1500, "batch_size": 256, "log_every": 500, "checkpoint_every": 10**6},
        **QUIET,
    }
    path = write_yaml(tmp_path / "widths.yaml", config)
    out = tmp_path / "run"
    code, _, err = sae_cli(["train", "--config", path, "--activations", data, "--out", out], capsys)
    assert code == 0, err
    code, printed, err = sae_cli(["select", out], capsys)
    assert code == 0, err
    record = json.loads((out / "selection.json").read_text())
    assert record["method"] == "loss_elbow+ev_knee"
    assert set(record["signals"]["widths"]["loss_elbow_width"].values()) == {16}
    picked = record["signals"]["instances"][record["instance"]]
    assert (picked["l1_coefficient"], picked["d_sae"]) == (0.3, 16), printed
    assert "loss_elbow_width: 16 (3/3 chains)" in printed
    assert record["ground_truth"]["width_aware"]["regret"] < 0.02, record["ground_truth"]


@pytest.mark.parametrize("recipe", ["constrained", "april2024"])
def test_held_out_loss_is_the_training_objective_under_a_folded_input_scale(recipe) -> None:
    """normalize_input trains on c·x and folds c into the saved weights; the ``loss`` signal
    must be the objective training minimised (on c·x), not the one on x."""
    from sae.model import SparseAutoencoder
    from sae.select import SAEView, held_out_stats

    torch.manual_seed(0)
    trained = SparseAutoencoder(1, 8, 16, recipe, seeds=[3])
    with torch.no_grad():
        trained.b_dec.normal_()
        trained.b_enc.normal_()
    x, c, l1 = torch.randn(256, 8), 2.5, 0.3
    out = trained(c * x)
    expected = float(out.reconstruction[0] + l1 * out.sparsity[0])
    saved = SparseAutoencoder(1, 8, 16, recipe)
    with torch.no_grad():
        for name, value in trained.instance_weights(0, c).items():
            getattr(saved, name).copy_(value[None])
    cfg = {"l1_coefficient": l1, "input_scale_folded": c}
    (stats,) = held_out_stats([SAEView("sae_0", cfg, saved)], [x])
    assert stats["loss"] == pytest.approx(expected, rel=1e-5)
