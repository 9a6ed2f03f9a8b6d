"""Activation files reach the device resident (copied once) or streamed (prefetched on a
thread); either way every step gets exactly the rows the memory-mapped read gives."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from devices import ACCELERATOR, DEVICES
from synthetic import file_source, sae_config, write_planted_file

from sae.activations import ActivationFile
from sae.data import FileSource
from sae.train import train_saes

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def small_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "rows.safetensors"
    write_planted_file(path, n_features=12, d=6, n_rows=1000, p=0.2, seed=3)
    return path


def _source(path: Path, budget: float | None, batch: int = 96) -> FileSource:
    return FileSource(
        ActivationFile(path), 0.1, seed=5, batch_size=batch, resident_budget_gb=budget
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shards", [range(0, 1), range(1, 3)], ids=["one_block", "two_of_four"])
def test_resident_and_streamed_blocks_equal_mapped_reads(
    small_file: Path, shards: range, device: str
) -> None:
    size = 96 // (1 if len(shards) == 1 else 4)
    on = torch.device(device)
    reference = _source(small_file, None)  # never prepared: reads the memory map each time
    resident, streamed = _source(small_file, None), _source(small_file, 0.0)
    resident.prepare(on, shards, size, first_step=3, end_step=40)
    streamed.prepare(on, shards, size, first_step=3, end_step=40)
    assert (reference.mode, resident.mode, streamed.mode) == ("mapped", "resident", "streamed")
    try:
        # 40 steps of 96 rows cross several epochs of the 900 training rows.
        for step in range(3, 40):
            for shard in shards:
                want = reference.block(step, shard, size, CPU).to(on)
                assert torch.equal(resident.block(step, shard, size, on), want), (step, shard)
                assert torch.equal(streamed.block(step, shard, size, on), want), (step, shard)
        # Held-out rows never appear in training blocks.
        assert reference.n_train == 900
    finally:
        resident.close()
        streamed.close()


def test_a_stream_asked_out_of_order_still_gives_the_right_rows(small_file: Path) -> None:
    reference, streamed = _source(small_file, None), _source(small_file, 0.0)
    streamed.prepare(CPU, range(1), 96, first_step=0, end_step=50)
    try:
        for step in (0, 1, 7, 3, 8, 49):
            assert torch.equal(streamed.block(step, 0, 96, CPU), reference.block(step, 0, 96, CPU))
    finally:
        streamed.close()


@pytest.mark.parametrize("device", DEVICES)
def test_training_on_streamed_data_equals_resident(
    small_file: Path, tmp_path: Path, device: str
) -> None:
    weights = []
    for budget in (None, 0.0):
        config = sae_config(
            sae={"d_sae": 16},
            train={"steps": 60, "batch_size": 64, "log_every": 20},
            data={"resident_budget_gb": budget},
            runtime={"accelerator": ACCELERATOR[device]},
        )
        out = tmp_path / f"budget_{budget}"
        assert train_saes(config, file_source(small_file, config), out) is not None
        weights.append((out / "sae_0" / "sae_weights.safetensors").read_bytes())
    assert weights[0] == weights[1]
