"""The training engine: many optimizer steps per Lightning call give exactly the results of one
step per call (weights, optimizer state, logged metrics, checkpoints), for both trainings."""

from __future__ import annotations

import math
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from devices import ACCELERATOR, DEVICES
from synthetic import file_source, sae_config, write_planted_file

import sae.run.fit
from sae.lightning_module import SAEModule
from sae.run.config_io import from_dict
from sae.run.engine import StepEngine
from sae.run.guards import last_checkpoint
from sae.run.metrics_log import read_metrics
from sae.train import train_saes
from toymodels.config import ToyConfig
from toymodels.lightning_module import ToyModelModule
from toymodels.train import train_toy


def _checkpoint(out: Path) -> dict:
    return torch.load(last_checkpoint(out), map_location="cpu", weights_only=False)


def _assert_same_run(a: Path, b: Path) -> None:
    """Bit-identical weights, buffers, optimizer state, schedule and metrics.jsonl."""
    ca, cb = _checkpoint(a), _checkpoint(b)
    assert ca["global_step"] == cb["global_step"]
    assert ca["state_dict"].keys() == cb["state_dict"].keys()
    for name, value in ca["state_dict"].items():
        assert torch.equal(value, cb["state_dict"][name]), name
    for sa, sb in zip(
        ca["optimizer_states"][0]["state"].values(), cb["optimizer_states"][0]["state"].values()
    ):
        for key, value in sa.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, sb[key]), key
            else:
                assert value == sb[key], key
    assert ca["lr_schedulers"] == cb["lr_schedulers"]
    assert read_metrics(a) == read_metrics(b)
    assert sorted(p.name for p in (a / "checkpoints").iterdir()) == sorted(
        p.name for p in (b / "checkpoints").iterdir()
    )


def _toy(out: Path, steps_per_call: int | None, device: str = "cpu") -> dict:
    config = from_dict(
        ToyConfig,
        {
            "model": {"kind": "relu_output", "n_features": 6, "n_hidden": 2},
            "data": {"feature_probability": [1.0, 0.1], "importance_decay": 0.8},
            "optim": {"schedule": "cosine", "warmup_steps": 7},
            "train": {
                "steps": 95,
                "batch_size": 64,
                "log_every": 10,
                "checkpoint_every": 30,
                "eval_samples": 512,
            },
            "runtime": {
                "threads": 1,
                "progress_bar": False,
                "steps_per_call": steps_per_call,
                "accelerator": ACCELERATOR[device],
            },
            "wandb": {"enabled": False},
        },
    )
    metrics = train_toy(config, out)
    assert metrics is not None
    return metrics


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("steps_per_call", [7, 1000, None])
def test_toy_steps_per_call_equal_one_step_per_call(
    tmp_path: Path, steps_per_call, device: str
) -> None:
    one = _toy(tmp_path / "one", 1, device)
    many = _toy(tmp_path / "many", steps_per_call, device)
    _assert_same_run(tmp_path / "one", tmp_path / "many")
    timing = many.pop("throughput")
    one.pop("throughput")
    assert one == many
    # Steady-state speed is recorded: every step after the first (warm-up) call.
    first_call = steps_per_call or 1
    assert timing["steps"] == 95 - min(first_call, 10) and timing["steps_per_second"] > 0
    # Logging steps (9, 19, ...) and checkpoints (every 30: the last at 90) where they belong.
    assert [r["step"] for r in read_metrics(tmp_path / "many")] == list(range(9, 95, 10))
    assert _checkpoint(tmp_path / "many")["global_step"] == 90


def _sae(
    tmp_path: Path, out: str, recipe: str, steps_per_call: int | None, device: str = "cpu"
) -> Path:
    path = tmp_path / "planted.safetensors"
    if not path.exists():
        write_planted_file(path, n_features=16, d=8, n_rows=4096, p=0.1, seed=1)
    config = sae_config(
        sae={"d_sae": 24, "recipe": recipe, "b_dec_init": "mean"},
        sweep={"l1_coefficient": [0.1, 10.0], "lr": [3e-3, 1e-2], "seed": [0, 1]},
        train={
            "steps": 230,
            "batch_size": 128,
            "log_every": 25,
            "checkpoint_every": 100,
            "lr_warmup_steps": 11,
            "l1_warmup_steps": 17,
            "lr_schedule": "linear",
            "lr_decay_steps": 50,
        },
        resample={"method": "anthropic", "every": 60, "window": 20, "samples": 256},
        runtime={"steps_per_call": steps_per_call, "accelerator": ACCELERATOR[device]},
    )
    folders = train_saes(config, file_source(path, config), tmp_path / out)
    assert folders is not None
    return tmp_path / out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("recipe", ["constrained", "april2024"])
def test_sae_steps_per_call_equal_one_step_per_call(tmp_path: Path, recipe: str, device) -> None:
    one = _sae(tmp_path, "one", recipe, 1, device)
    many = _sae(tmp_path, "many", recipe, 13, device)
    _assert_same_run(one, many)
    state = _checkpoint(many)["state_dict"]
    assert float(state["resampled_total"].sum()) > 0  # resampling ran, on chunk boundaries
    for k in range(2):
        for name in ("sae_weights.safetensors", "cfg.json"):
            assert (one / f"sae_{k}" / name).read_bytes() == (many / f"sae_{k}" / name).read_bytes()


@pytest.mark.parametrize("training", ["toy", "sae"])
def test_inference_mode_changes_no_number(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, training: str
) -> None:
    """Steps with their own backward run in inference mode; with it switched off (autograd's
    bookkeeping back on every op) the run is bit for bit the same: weights, optimizer state
    (which resampling and resuming update outside inference mode), metrics, checkpoints."""
    module_class = ToyModelModule if training == "toy" else SAEModule
    seen: list[bool] = []
    step = module_class.train_step

    def spy(self, *args):
        seen.append(torch.is_inference_mode_enabled())
        return step(self, *args)

    monkeypatch.setattr(module_class, "train_step", spy)
    run = _toy if training == "toy" else lambda out, k: _sae(tmp_path, out.name, "april2024", k)
    run(tmp_path / "inference", 13)
    assert seen and all(seen)
    seen.clear()
    monkeypatch.setattr(module_class, "step_uses_autograd", lambda self: True)
    run(tmp_path / "autograd", 13)
    assert seen and not any(seen)
    _assert_same_run(tmp_path / "inference", tmp_path / "autograd")


class _Null(StepEngine):
    def __init__(self, steps: int, periods: tuple[int, ...]) -> None:
        super().__init__(steps, periods, None)


def test_chunks_end_on_every_event_boundary() -> None:
    engine = _Null(95, (10, 30, 0))
    assert engine.chunk_length(0, 1000) == 10
    assert engine.chunk_length(27, 1000) == 3
    assert engine.chunk_length(27, 2) == 2
    assert engine.chunk_length(90, 1000) == 5  # the last step ends the run
    starts, step = [], 0
    while step < 95:
        starts.append(step)
        step += engine.chunk_length(step, 7)
    assert step == 95
    lengths = [engine.chunk_length(s, 7) for s in starts]
    assert all(1 <= n <= 7 for n in lengths)  # never longer than asked
    # No chunk runs across a multiple of 10 (the logging period): each lies within one period.
    assert all(s // 10 == (s + n - 1) // 10 for s, n in zip(starts, lengths, strict=True))
    ends = {s + engine.chunk_length(s, 7) for s in starts}
    assert {10, 20, 30, 40, 50, 60, 70, 80, 90, 95} <= ends


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("precision", ["bf16-mixed", "64-true"])
def test_precision_settings_train_and_save_float32(tmp_path: Path, precision: str, device) -> None:
    path = tmp_path / "planted.safetensors"
    write_planted_file(path, n_features=16, d=8, n_rows=2048, p=0.1, seed=1)
    config = sae_config(
        sae={"d_sae": 16},
        train={"steps": 40, "batch_size": 64, "log_every": 20},
        resample={"method": "anthropic", "every": 20, "window": 10, "samples": 128},
        runtime={"precision": precision},
    )
    assert config.runtime.accelerator == "auto"  # the default: a GPU when there is one
    config.runtime.accelerator = ACCELERATOR[device]
    (folder,) = train_saes(config, file_source(path, config), tmp_path / "run")
    from safetensors.torch import load_file

    weights = load_file(folder / "sae_weights.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.float32}
    assert all(bool(torch.isfinite(t).all()) for t in weights.values())
    assert all(
        torch.isfinite(torch.tensor(r["loss/instance_0"])) for r in read_metrics(tmp_path / "run")
    )


def test_cpu_training_keeps_freed_memory_and_flushes_denormals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    for name in ("retain_freed_memory", "flush_denormals"):
        monkeypatch.setattr(sae.run.fit, name, lambda name=name: calls.append(name) or True)
    _toy(tmp_path / "run", None)
    assert calls == ["retain_freed_memory", "flush_denormals"]


DENORMALS_SCRIPT = """
import sys, torch
from sae.run.optim import InstanceAdam
from sae.run.runtime import flush_denormals
if sys.argv[1] == "flush" and not flush_denormals():
    sys.exit("unsupported")
# A latent that fired once and then died: one gradient, then zeros for 2,000 steps.
p = torch.nn.Parameter(torch.zeros(1, 64))
optimizer = InstanceAdam([p], torch.tensor([1e-3]))
for step in range(2000):
    p.grad = torch.full_like(p, 0.01 if step == 0 else 0.0)
    optimizer.step()
m = optimizer.state[p]["exp_avg"]
print(int(((m != 0) & (m.abs() < torch.finfo(m.dtype).tiny)).sum()), int((m == 0).sum()))
"""


def test_flushed_denormals_let_dead_latents_adam_moments_reach_zero() -> None:
    # Without flushing, 0.9 · (smallest denormal) rounds back to it: the moments stay denormal
    # forever, and every step computes on them at x86's denormal speed. A fresh process each:
    # the setting stays.
    def counts(mode: str) -> list[int]:
        out = subprocess.run(
            [sys.executable, "-c", DENORMALS_SCRIPT, mode],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if out.stderr.strip() == "unsupported":
            pytest.skip("this CPU cannot flush denormals")
        assert out.returncode == 0, out.stderr
        return [int(v) for v in out.stdout.split()]

    assert counts("flush") == [0, 64]
    assert counts("keep") == [64, 0]  # all denormal, none zero


FAULTS_SCRIPT = """
import resource, torch
from sae.run.runtime import retain_freed_memory
assert retain_freed_memory()
def step():
    held = [torch.ones(1 << 18) for _ in range(5)]  # five 1 MB tensors, written
    return sum(t[0] for t in held)
for _ in range(5):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(100):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_freed_memory_is_reused_without_page_faults() -> None:
    # A step's tensors freed and allocated again: glibc's defaults fault most of their pages in
    # again every step (99,200 faults of 128,000 pages where this was written); kept, none.
    # A fresh process: the setting is process-wide.
    out = subprocess.run(
        [sys.executable, "-c", FAULTS_SCRIPT], capture_output=True, text=True, check=True
    )
    assert int(out.stdout.split()[-1]) < 128_000 // 100


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("precision", ["bf16-mixed", "64-true"])
def test_toy_precision_settings_train_evaluate_and_save_float32(
    tmp_path: Path, precision: str, device: str
) -> None:
    # 64-true used to fail in the final evaluation (float32 samples into a float64 model).
    config = from_dict(
        ToyConfig,
        {
            "model": {"kind": "relu_output", "n_features": 6, "n_hidden": 2},
            "data": {"feature_probability": [1.0, 0.1]},
            "train": {"steps": 30, "batch_size": 64, "eval_samples": 512},
            "runtime": {
                "threads": 1,
                "progress_bar": False,
                "precision": precision,
                "accelerator": ACCELERATOR[device],
            },
            "wandb": {"enabled": False},
        },
    )
    metrics = train_toy(config, tmp_path / "run")
    assert metrics is not None
    assert all(math.isfinite(inst["loss"]) for inst in metrics["instances"])
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "run" / "model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.float32}
