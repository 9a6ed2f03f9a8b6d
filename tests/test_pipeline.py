"""`sae run` on the README's quickstart config, end to end: the SAE sweep must recover every
feature the toy model represents, and the report must say which λ did."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli.main import cli, run_cli

pytestmark = pytest.mark.slow

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


def test_quickstart_recovers_the_represented_features(tmp_path: Path, capsys) -> None:
    out = tmp_path / "qs"
    argv = ["run", "--config", str(QUICKSTART), "--out", str(out)]
    for stage in ("toy", "sae"):
        argv += [
            "--set",
            f"{stage}.runtime.progress_bar=false",
            "--set",
            f"{stage}.wandb.enabled=false",
        ]
    assert run_cli(cli.main, argv) == 0, capsys.readouterr().err
    printed = capsys.readouterr()
    # The result on stdout; stage lines and progress on stderr.
    assert printed.out.startswith("best: sae_2 (l1 = 0.3); report: ")
    assert "[1/4] training toy models" in printed.err and "[1/4]" not in printed.out

    toy = json.loads((out / "toy" / "metrics.json").read_text())["instances"][0]
    assert toy["n_represented"] == 8  # 8 features in 3 dimensions: superposition
    assert toy["dims_per_feature"] < 0.4

    scores = {}
    for k in range(4):
        stats = json.loads((out / "sae" / f"sae_{k}" / "eval_stats.json").read_text())
        scores[k] = stats["scalars"]
        assert len(stats["features"]) == 8 and len(stats["latents"]) == 16
        assert (out / "sae" / f"sae_{k}" / "cosine_heatmap.png").stat().st_size > 0
    best = max(
        scores.values(), key=lambda s: (s["represented/recovered_0.99"], s["represented/mcc"])
    )
    assert best["represented/recovered_0.99"] == 1.0
    assert best["represented/mcc"] > 0.99
    # The smallest λ reconstructs best but recovers fewer features: EV is not recovery.
    assert scores[0]["explained_variance"] > best["explained_variance"]
    assert scores[0]["represented/recovered_0.99"] < 1.0

    report = (out / "report.md").read_text()
    assert "**Best:" in report and "recovered 100% of the represented features" in report
