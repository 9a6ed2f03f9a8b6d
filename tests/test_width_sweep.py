"""Width sweeps: instances of different widths in one batched tensor train exactly as runs of
their own width, and save SAEs of their own width."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from synthetic import SHORT_SCHEDULE, file_source, sae_config, write_planted_file

from sae.config import SAERunConfig
from sae.io import load_sae
from sae.lightning_module import SAEModule
from sae.run.config_io import from_dict
from sae.run.errors import UsageError
from sae.train import train_saes

RUN = {"sae": {"recipe": "april2024", "b_dec_init": "geometric_median"}, "train": SHORT_SCHEDULE}
WIDTHS, L1, SEEDS = [12, 32, 20], [1.0, 3.0, 10.0], [0, 1, 2]
NAMES = ("W_enc", "W_dec", "b_enc", "b_dec")


def _train(path: Path, out: Path, recipe: str, resample: dict, widths, l1, seeds) -> list[dict]:
    config = sae_config(
        sae={**RUN["sae"], "recipe": recipe},
        train=RUN["train"],
        sweep={"l1_coefficient": l1, "seed": seeds, "lr": [3e-3], "d_sae": widths},
        resample=resample,
        # float64: a narrower instance's products run over another shape than a run of its own
        # width (another summation order); in float32 that rounding grows to ~1e-3 over 300
        # steps at latents near the edge of firing, in float64 it stays far below atol.
        runtime={"precision": "64-true"},
    )
    folders = train_saes(config, file_source(path, config), out)
    return [{n: getattr(load_sae(f), n) for n in NAMES} | {"folder": f} for f in folders]


@pytest.mark.parametrize(
    "recipe,resample",
    [
        ("april2024", {"method": "none"}),
        ("april2024", {"method": "anthropic", "every": 100, "window": 50, "samples": 512}),
        ("april2024", {"method": "simple", "every": 100, "window": 50}),
        ("constrained", {"method": "none"}),
    ],
    ids=["april2024", "april2024_anthropic", "april2024_simple", "constrained"],
)
def test_width_sweep_equals_runs_of_each_width(tmp_path, recipe, resample) -> None:
    path = tmp_path / "small.safetensors"
    write_planted_file(path, n_features=16, d=8, n_rows=8192, p=0.1, seed=1)
    batched = _train(path, tmp_path / "batched", recipe, resample, WIDTHS, L1, SEEDS)
    for k, width in enumerate(WIDTHS):
        saved = batched[k]
        assert saved["W_enc"].shape == (8, width) and saved["W_dec"].shape == (width, 8)
        cfg = json.loads((saved["folder"] / "cfg.json").read_text())
        assert cfg["d_sae"] == width
        (alone,) = _train(
            path, tmp_path / f"alone{k}", recipe, resample, [width], [L1[k]], [SEEDS[k]]
        )
        for name in NAMES:
            torch.testing.assert_close(saved[name], alone[name], atol=1e-9, rtol=0)
    if resample["method"] != "none":
        # Resampling did revive latents (large λ kills some): it changed the weights.
        plain = _train(path, tmp_path / "plain", recipe, {"method": "none"}, WIDTHS, L1, SEEDS)
        changed = [float((p["W_dec"] - b["W_dec"]).abs().max()) for p, b in zip(plain, batched)]
        assert max(changed) > 1e-3, changed


def test_padded_latents_stay_zero_with_no_gradient_or_adam_state(tmp_path) -> None:
    """Latents past an instance's width: zero weights, zero gradient, zero Adam moments, never
    counted dead, never resampled."""
    path = tmp_path / "small.safetensors"
    write_planted_file(path, n_features=16, d=8, n_rows=4096, p=0.1, seed=2)
    config = sae_config(
        sae={"recipe": "april2024", "b_dec_init": "mean"},
        sweep={"l1_coefficient": [0.3, 30.0], "d_sae": [24, 6]},
        train={"steps": 120, "batch_size": 64, "log_every": 40},
        resample={"method": "anthropic", "every": 40, "window": 20, "samples": 256},
    )
    module = SAEModule(config, 8, file_source(path, config))
    from sae.run.fit import fit

    fit(module, config, tmp_path / "run", False, [])
    sae = module.sae
    assert sae.widths == [24, 6] and sae.d_sae == 24
    pad = ~sae.latents
    assert int(pad.sum()) == 18
    assert torch.all(sae.W_enc.transpose(1, 2)[pad] == 0)
    assert torch.all(sae.W_dec[pad] == 0) and torch.all(sae.b_enc[pad] == 0)
    state = module.optimizers().optimizer.state
    for p in (sae.W_enc, sae.W_dec, sae.b_enc):
        for key in ("exp_avg", "exp_avg_sq"):
            moments = state[p][key]
            moments = moments.transpose(1, 2) if p is sae.W_enc else moments
            assert torch.all(moments[pad] == 0)
    # One more step by hand: the padded latents get exactly zero gradient.
    x = file_source(path, config).sample(256, seed=5, device=torch.device("cpu"))
    out = sae(x)
    (out.reconstruction + 30.0 * out.sparsity).sum().backward()
    assert torch.all(out.codes[1, :, 6:] == 0)
    assert torch.all(sae.W_enc.grad.transpose(1, 2)[pad] == 0)
    assert torch.all(sae.W_dec.grad[pad] == 0) and torch.all(sae.b_enc.grad[pad] == 0)
    assert sae.W_dec.grad[~pad].abs().max() > 0
    # λ = 30 killed latents of the narrow instance and they were resampled; only its own 6
    # latents could be: never more than 6 per round.
    assert 0 < float(module.resampled_total[1]) <= 6 * 2


def test_width_config_in_one_place() -> None:
    base = {"wandb": {"enabled": False}}
    assert from_dict(SAERunConfig, base).widths == [256]
    assert from_dict(SAERunConfig, base | {"sae": {"d_sae": 64}}).widths == [64]
    swept = from_dict(SAERunConfig, base | {"sweep": {"d_sae": [16, 32], "l1_coefficient": [0.1]}})
    assert swept.widths == [16, 32] and swept.sweep.n_instances == 2
    # broadcast with the other lists
    both = from_dict(
        SAERunConfig, base | {"sweep": {"d_sae": [16], "l1_coefficient": [0.1, 0.3, 1.0]}}
    )
    assert both.widths == [16, 16, 16]
    with pytest.raises(UsageError, match=r"sae.d_sae \(64\) and sweep.d_sae"):
        from_dict(SAERunConfig, base | {"sae": {"d_sae": 64}, "sweep": {"d_sae": [16, 32]}})
    with pytest.raises(UsageError, match="length 1 or all the same length"):
        from_dict(
            SAERunConfig, base | {"sweep": {"d_sae": [16, 32], "l1_coefficient": [0.1, 1, 2]}}
        )
    with pytest.raises(UsageError, match="sweep.d_sae must be >= 1"):
        from_dict(SAERunConfig, base | {"sweep": {"d_sae": [0]}})


def test_a_width_in_two_places_is_one_line_naming_the_set(capsys) -> None:
    from cli_runs import sae_cli

    argv = ["train", "--config", "configs/sae/default.yaml", "--set", "sweep.d_sae=[16,32,64]"]
    code, out, err = sae_cli(argv + ["--print-config"], capsys)
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        "error: --set sweep.d_sae=[16,32,64]: sae.d_sae (64) and sweep.d_sae ([16, 32, 64]) both "
        "set the width: give it in one place (--set sae.d_sae=null for a width sweep)"
    ]
    code, out, _ = sae_cli(argv + ["--set", "sae.d_sae=null", "--print-config"], capsys)
    assert code == 0 and "- 16\n  - 32\n  - 64" in out


def _interrupt_at(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """SIGINT to this process after the first chunk ending at or past ``step``: the run's own
    handler checkpoints and stops, as for a user's Ctrl-C (no timing involved)."""
    import os
    import signal

    from sae.run.metrics_log import MetricsFile

    original = MetricsFile.on_chunk_end
    sent: list[int] = []

    def on_chunk_end(self, trainer, module, out) -> None:
        original(self, trainer, module, out)
        if trainer.global_step >= step and not sent:
            sent.append(trainer.global_step)
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(MetricsFile, "on_chunk_end", on_chunk_end)


def test_an_interrupted_width_sweep_resumes_to_the_uninterrupted_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Widths [12, 32, 20] with every schedule on and anthropic resampling at steps 40 and 80,
    stopped at step 60 and resumed with ``sae train --resume``: the same bytes as one run."""
    from cli_runs import QUIET, sae_cli, write_yaml
    from safetensors.torch import load_file

    from sae.run.metrics_log import read_metrics

    acts = tmp_path / "small.safetensors"
    write_planted_file(acts, n_features=16, d=8, n_rows=8192, p=0.1, seed=1)
    config = {
        "sae": {**RUN["sae"], "d_sae": None},
        "sweep": {"l1_coefficient": L1, "seed": SEEDS, "lr": [3e-3], "d_sae": WIDTHS},
        "train": {**SHORT_SCHEDULE, "steps": 120, "checkpoint_every": 50, "log_every": 20},
        "resample": {"method": "anthropic", "every": 40, "window": 20, "samples": 512},
        **QUIET,
    }
    config["runtime"] = {**config["runtime"], "steps_per_call": 10}
    cfg = write_yaml(tmp_path / "sae.yaml", config)
    argv = ["train", "--config", cfg, "--activations", acts]
    out, ref = tmp_path / "run", tmp_path / "reference"
    code, _, err = sae_cli([*argv, "--out", ref], capsys)
    assert code == 0, err
    with monkeypatch.context() as m:
        _interrupt_at(m, 60)
        code, _, err = sae_cli([*argv, "--out", out], capsys)
    assert code == 130 and "interrupted at step 60" in err, err
    assert not (out / "sae_0").exists()
    code, _, err = sae_cli(["train", "--resume", out], capsys)
    assert code == 0, err

    reference = read_metrics(ref)
    assert read_metrics(out) == reference
    # resampling fired before and after the interruption (λ = 10 starves latents)
    fired = [r.get("resampled/instance_2", 0) for r in reference]
    assert fired[-1] > fired[2] > 0, fired
    for k, width in enumerate(WIDTHS):
        a = load_file(str(out / f"sae_{k}" / "sae_weights.safetensors"))
        b = load_file(str(ref / f"sae_{k}" / "sae_weights.safetensors"))
        assert a.keys() == b.keys() and a["W_dec"].shape == (width, 8)
        for name in b:  # bit-identical, not merely close
            assert torch.equal(a[name], b[name]), (k, name)
