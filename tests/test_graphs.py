"""runtime.cuda_graphs: the model's forward and backward replayed from a CUDA graph
(sae/run/graphs.py). On the CPU a stand-in with a graph's semantics (its own input and output
tensors, written in place at each replay) checks what the project does around the graph; on a
CUDA machine the same tests run with real graphs (the ``cuda`` cases)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from devices import ACCELERATOR, DEVICES
from safetensors.torch import load_file
from synthetic import file_source, sae_config, write_planted_file

import sae.lightning_module
import toymodels.lightning_module
from sae.run.config_io import from_dict
from sae.run.graphs import GraphedFunction
from sae.run.metrics_log import read_metrics
from sae.train import train_saes
from toymodels.config import ToyConfig
from toymodels.train import train_toy


class ReplayedOnCPU:
    """A CUDA graph's semantics on the CPU: capture runs the function and keeps its output
    tensors; a replay runs it again on the same arguments and writes the results into them."""

    captures = replays = 0

    def capture(self, fn: Any) -> Any:
        ReplayedOnCPU.captures += 1
        self.fn = fn
        self.outputs = fn()
        return self.outputs

    def replay(self) -> None:
        _copy_into(self.outputs, self.fn())
        ReplayedOnCPU.replays += 1


def _copy_into(target: Any, source: Any) -> None:
    if isinstance(target, torch.Tensor):
        target.copy_(source)
    elif isinstance(target, (tuple, list)):
        for t, s in zip(target, source, strict=True):
            _copy_into(t, s)
    else:
        assert target == source


@pytest.fixture
def graphs_device(monkeypatch: pytest.MonkeyPatch, request) -> str:
    """The device of the test: on the CPU, graphs are allowed there and made by the stand-in."""
    device = request.param
    if device == "cpu":
        monkeypatch.setattr(ReplayedOnCPU, "replays", 0)
        monkeypatch.setattr(ReplayedOnCPU, "captures", 0)
        monkeypatch.setattr(GraphedFunction, "backend", ReplayedOnCPU)
        for module in (sae.lightning_module, toymodels.lightning_module):
            monkeypatch.setattr(module, "graphs_usable", lambda *args: True)
    return device


def test_a_graphed_function_reads_fixed_tensors_in_place_and_recaptures_when_they_move(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(GraphedFunction, "backend", ReplayedOnCPU)
    calls = []

    def affine(x: torch.Tensor, w: torch.Tensor, scale: float) -> tuple[torch.Tensor, ...]:
        calls.append(1)
        return x @ w * scale, w.sum()

    graphed = GraphedFunction(affine, varying=(0,))
    w = torch.ones(3, 2)
    first = graphed(torch.ones(4, 3), w, 2.0)
    assert graphed.captures == 1 and torch.equal(first[0], torch.full((4, 2), 6.0))
    w.mul_(2)  # an in-place update (the optimizer's) is read by the next replay
    second = graphed(torch.zeros(4, 3), w, 2.0)
    assert second[0] is first[0]  # the graph's own tensors, overwritten
    assert torch.equal(second[0], torch.zeros(4, 2)) and float(second[1]) == 12.0
    assert graphed.captures == 1
    graphed(torch.zeros(4, 3), w.clone(), 2.0)  # a fixed tensor elsewhere: capture again
    graphed(torch.zeros(5, 3), w, 2.0)  # a new shape
    graphed(torch.zeros(5, 3), w, 3.0)  # a new non-tensor argument
    assert graphed.captures == 4


def test_a_failed_capture_warns_once_and_runs_eagerly(monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken:
        def capture(self, fn: Any) -> Any:
            raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(GraphedFunction, "backend", Broken)
    graphed = GraphedFunction(lambda x: x + 1, varying=(0,), name="f")
    with pytest.warns(UserWarning, match="capture of f failed"):
        assert torch.equal(graphed(torch.zeros(2)), torch.ones(2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(graphed(torch.ones(2)), torch.full((2,), 2.0))
    assert "not permitted" in graphed.failed


def _no_fallback(run: Any, *args: Any) -> Any:
    """``run(*args)``, failing if a graph capture fell back to eager."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run(*args)
    assert not [w for w in caught if "CUDA graph capture" in str(w.message)]
    return result


@pytest.mark.parametrize("graphs_device", DEVICES, indirect=True)
def test_sae_training_with_graphs_equals_without(tmp_path: Path, graphs_device: str) -> None:
    device = graphs_device
    path = tmp_path / "planted.safetensors"
    write_planted_file(path, n_features=16, d=8, n_rows=4096, p=0.1, seed=1)
    runs = []
    for graphs in (False, True):
        config = sae_config(
            sae={"d_sae": 24, "recipe": "constrained"},
            sweep={"l1_coefficient": [0.1, 3.0], "seed": [0, 1]},
            train={"steps": 120, "batch_size": 128, "log_every": 25, "l1_warmup_steps": 30},
            resample={"method": "anthropic", "every": 50, "window": 20, "samples": 256},
            runtime={"accelerator": ACCELERATOR[device], "cuda_graphs": graphs},
        )
        out = tmp_path / f"graphs_{graphs}"
        _no_fallback(train_saes, config, file_source(path, config), out)
        runs.append(out)
        if device == "cpu":  # one capture, every step replayed it (none without graphs)
            assert (ReplayedOnCPU.captures, ReplayedOnCPU.replays) == (
                (1, 120) if graphs else (0, 0)
            )
    for k in range(2):
        a, b = (run / f"sae_{k}" / "sae_weights.safetensors" for run in runs)
        if device == "cpu":
            assert a.read_bytes() == b.read_bytes()
        else:  # the same kernels; allow for a different algorithm inside the graph
            for name, value in load_file(a).items():
                torch.testing.assert_close(load_file(b)[name], value, rtol=1e-4, atol=1e-6)
    if device == "cpu":
        assert read_metrics(runs[0]) == read_metrics(runs[1])


@pytest.mark.parametrize("graphs_device", DEVICES, indirect=True)
def test_toy_training_with_graphs_equals_without(tmp_path: Path, graphs_device: str) -> None:
    device = graphs_device
    results = []
    for graphs in (False, True):
        config = from_dict(
            ToyConfig,
            {
                "model": {"kind": "relu_output", "n_features": 6, "n_hidden": 2},
                "data": {"feature_probability": [1.0, 0.1]},
                "optim": {"schedule": "cosine", "warmup_steps": 7},
                "train": {"steps": 60, "batch_size": 64, "log_every": 10, "eval_samples": 512},
                "runtime": {
                    "threads": 1,
                    "progress_bar": False,
                    "accelerator": ACCELERATOR[device],
                    "cuda_graphs": graphs,
                },
                "wandb": {"enabled": False},
            },
        )
        out = tmp_path / f"graphs_{graphs}"
        metrics = _no_fallback(train_toy, config, out)
        if device == "cpu":
            assert (ReplayedOnCPU.captures, ReplayedOnCPU.replays) == (
                (1, 60) if graphs else (0, 0)
            )
        metrics.pop("throughput")
        weights = load_file(out / "model.safetensors")  # (its metadata holds the config)
        results.append((metrics, weights, read_metrics(out)))
    if device == "cpu":
        assert results[0][0] == results[1][0] and results[0][2] == results[1][2]
        assert results[0][1].keys() == results[1][1].keys()
        assert all(torch.equal(results[0][1][k], results[1][1][k]) for k in results[0][1])
    else:
        for a, b in zip(results[0][2], results[1][2]):
            assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-4)
