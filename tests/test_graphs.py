"""runtime.cuda_graphs: the model's forward and backward replayed from a CUDA graph
(sae/run/graphs.py). On the CPU a stand-in with a graph's semantics (its own input and output
tensors, written in place at each replay) checks what the project does around the graph: which
inputs are copied in, which are read in place, that outputs are overwritten by the next call.
It cannot check capture itself (a host sync inside the function would pass it): on a CUDA
machine the same tests run with real graphs (the ``cuda`` cases), counting captures and
replays."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from devices import ACCELERATOR, DEVICES
from safetensors.torch import load_file
from synthetic import file_source, sae_config, write_planted_file

import sae.run.graphs
from sae.model import SparseAutoencoder
from sae.run.config_io import from_dict
from sae.run.errors import RunError
from sae.run.graphs import CudaGraph, GraphedFunction, graphs_usable
from sae.run.metrics_log import read_metrics
from sae.train import train_saes
from toymodels.config import ToyConfig
from toymodels.train import train_toy

COUNTS = {"captures": 0, "replays": 0}


class ReplayedOnCPU:
    """A CUDA graph's semantics on the CPU: capture runs the function and keeps its output
    tensors; a replay runs it again on the same arguments and writes the results into them."""

    def capture(self, fn: Any) -> Any:
        COUNTS["captures"] += 1
        self.fn = fn
        self.outputs = fn()
        return self.outputs

    def replay(self) -> None:
        _copy_into(self.outputs, self.fn())
        COUNTS["replays"] += 1


class CountedCudaGraph(CudaGraph):
    """The real backend, counted."""

    def capture(self, fn: Any) -> Any:
        COUNTS["captures"] += 1
        return super().capture(fn)

    def replay(self) -> None:
        COUNTS["replays"] += 1
        super().replay()


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
    """The test's device, with counted graphs: real ones on CUDA; on the CPU the stand-in,
    allowed there."""
    device = request.param
    monkeypatch.setitem(COUNTS, "captures", 0)
    monkeypatch.setitem(COUNTS, "replays", 0)
    if device == "cpu":
        monkeypatch.setattr(GraphedFunction, "backend", ReplayedOnCPU)
        monkeypatch.setattr(sae.run.graphs, "graphs_usable", lambda *args: True)
    else:
        monkeypatch.setattr(GraphedFunction, "backend", CountedCudaGraph)
    return device


def test_graphs_apply_on_one_cuda_device_without_autocast() -> None:
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert graphs_usable(cuda, 1, "32-true") and graphs_usable(cuda, 1, "64-true")
    assert not graphs_usable(cuda, 1, "bf16-mixed")
    assert not graphs_usable(cuda, 2, "32-true")
    assert not graphs_usable(cpu, 1, "32-true")


def test_a_graphed_function_reads_fixed_tensors_in_place_and_recaptures_when_they_move(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(GraphedFunction, "backend", ReplayedOnCPU)

    def affine(x: torch.Tensor, w: torch.Tensor, scale: float) -> tuple[torch.Tensor, ...]:
        return x @ w * scale, w.sum()

    graphed = GraphedFunction(affine, varying=(0,))
    w = torch.ones(3, 2)
    first = graphed(torch.ones(4, 3), w, 2.0)
    assert graphed.captures == 1 and torch.equal(first[0], torch.full((4, 2), 6.0))
    assert graphed.owns(first[0]) and not graphed.owns(w)
    w.mul_(2)  # an in-place update (the optimizer's) is read by the next replay
    second = graphed(torch.zeros(4, 3), w, 2.0)
    assert second[0] is first[0]  # the graph's own tensors, overwritten
    assert torch.equal(second[0], torch.zeros(4, 2)) and float(second[1]) == 12.0
    assert graphed.captures == 1
    graphed(torch.zeros(4, 3), w.clone(), 2.0)  # a fixed tensor elsewhere: capture again
    graphed(torch.zeros(5, 3), w, 2.0)  # a new shape
    with pytest.warns(UserWarning, match="captured as a CUDA graph 4 times"):
        graphed(torch.zeros(5, 3), w, 3.0)  # a new non-tensor argument
    graphed(torch.zeros(5, 3), w.t().contiguous().t(), 3.0)  # a new layout
    assert graphed.captures == 5


def test_a_failed_capture_stops_the_run_with_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Broken:
        def capture(self, fn: Any) -> Any:
            raise RuntimeError("operation not permitted when stream is capturing\nmore")

    monkeypatch.setattr(GraphedFunction, "backend", Broken)
    graphed = GraphedFunction(lambda x: x + 1, varying=(0,), name="the step")
    with pytest.raises(RunError, match="capture of the step failed.*not permitted") as caught:
        graphed(torch.zeros(2))
    assert "\n" not in str(caught.value) and "runtime.cuda_graphs=false" in str(caught.value)


def test_a_failed_capture_stops_sae_training_with_a_run_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through Lightning's fit, as `sae train` meets it (the CLI prints a RunError as one
    line)."""

    class Broken:
        def capture(self, fn: Any) -> Any:
            raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(GraphedFunction, "backend", Broken)
    monkeypatch.setattr(sae.run.graphs, "graphs_usable", lambda *args: True)
    path = tmp_path / "planted.safetensors"
    write_planted_file(path, n_features=8, d=4, n_rows=512, p=0.1, seed=1)
    config = sae_config(
        sae={"d_sae": 8}, train={"steps": 5, "batch_size": 32}, runtime={"cuda_graphs": True}
    )
    with pytest.raises(RunError, match="capture of the SAE step failed"):
        train_saes(config, file_source(path, config), tmp_path / "run")


def test_gradients_accumulated_over_graphed_calls_add_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """The graph's gradient tensors are overwritten by its next call: forward_backward copies
    a .grad that is still one of them before calling again, so accumulation is backward's."""
    monkeypatch.setattr(GraphedFunction, "backend", ReplayedOnCPU)
    from sae.loss import sae_forward_backward

    sae = SparseAutoencoder(2, 6, 10, "april2024")
    graphed = GraphedFunction(sae_forward_backward, (0, 7))
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(32, 6, generator=g) for _ in range(3)]
    weight = torch.tensor([0.3, 1.0])
    grads = []
    for run in (sae_forward_backward, graphed):
        sae.zero_grad(set_to_none=True)
        for x in batches:  # no zeroing between calls
            sae.forward_backward(x, weight, run)
        grads.append([p.grad.clone() for p in sae.parameters()])
    for eager, replayed in zip(*grads):
        torch.testing.assert_close(replayed, eager, rtol=1e-6, atol=1e-7)


def _counts(graphs: bool, steps: int) -> tuple[int, int]:
    return (1, steps) if graphs else (0, 0)


@pytest.mark.parametrize("graphs_device", DEVICES, indirect=True)
def test_sae_training_with_graphs_equals_without(tmp_path: Path, graphs_device: str) -> None:
    device = graphs_device
    path = tmp_path / "planted.safetensors"
    write_planted_file(path, n_features=16, d=8, n_rows=4096, p=0.1, seed=1)
    # Resampling's discrete choices could amplify a last-bit difference on a GPU; on the CPU
    # the stand-in is exact, so resampling runs there too.
    resample = {"method": "anthropic", "every": 50, "window": 20, "samples": 256}
    runs = []
    for graphs in (False, True):
        COUNTS.update(captures=0, replays=0)
        config = sae_config(
            sae={"d_sae": 24, "recipe": "constrained"},
            sweep={"l1_coefficient": [0.1, 3.0], "seed": [0, 1]},
            train={"steps": 120, "batch_size": 128, "log_every": 25, "l1_warmup_steps": 30},
            resample=resample if device == "cpu" else {"method": "none"},
            runtime={"accelerator": ACCELERATOR[device], "cuda_graphs": graphs},
        )
        out = tmp_path / f"graphs_{graphs}"
        train_saes(config, file_source(path, config), out)
        # One capture, every step replayed it (none without graphs).
        assert (COUNTS["captures"], COUNTS["replays"]) == _counts(graphs, 120)
        runs.append(out)
    for k in range(2):
        a, b = (load_file(run / f"sae_{k}" / "sae_weights.safetensors") for run in runs)
        for name, value in a.items():
            if device == "cpu":
                assert torch.equal(b[name], value), name
            else:  # the same kernels; allow for another algorithm inside the graph
                torch.testing.assert_close(b[name], value, rtol=1e-4, atol=1e-6)
    if device == "cpu":
        assert read_metrics(runs[0]) == read_metrics(runs[1])


@pytest.mark.parametrize("graphs_device", DEVICES, indirect=True)
def test_toy_training_with_graphs_equals_without(tmp_path: Path, graphs_device: str) -> None:
    device = graphs_device
    results = []
    for graphs in (False, True):
        COUNTS.update(captures=0, replays=0)
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
        metrics = train_toy(config, out)
        assert (COUNTS["captures"], COUNTS["replays"]) == _counts(graphs, 60)
        metrics.pop("throughput")
        weights = load_file(out / "model.safetensors")  # (its metadata holds the config)
        results.append((metrics, weights, read_metrics(out)))
    (metrics_a, weights_a, log_a), (metrics_b, weights_b, log_b) = results
    assert weights_a.keys() == weights_b.keys()
    if device == "cpu":
        assert metrics_a == metrics_b and log_a == log_b
        assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    else:
        for a, b in zip(log_a, log_b, strict=True):
            assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-4)
