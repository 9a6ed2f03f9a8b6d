"""Blocks made ahead on a background thread are the blocks the step would have made itself:
the prefetcher's order and fallbacks, toy training with and without drawing ahead, and an SAE
fed by a live toy model with and without it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_engine import _assert_same_run, _toy

import sae.run.prefetch
import toymodels.lightning_module
from sae.data import GeneratedSource
from sae.run.prefetch import BlockPrefetcher, spare_cpu_core


def spare_core_is(value: bool):
    """A stand-in for ``spare_cpu_core`` that answers ``value`` (still honouring
    ``runtime.draw_ahead``)."""
    return lambda device, wanted=True: wanted and value


def test_blocks_come_in_step_order_and_a_skipped_block_falls_back() -> None:
    made: list[tuple[int, int]] = []

    def produce(step: int, shard: int) -> torch.Tensor:
        made.append((step, shard))
        return torch.tensor([step, shard])

    ahead = BlockPrefetcher(produce, range(1, 3), first_step=5, end_step=9)
    try:
        assert ahead.take(5, 1).tolist() == [5, 1]
        assert ahead.take(5, 2).tolist() == [5, 2]
        assert ahead.take(7, 2).tolist() == [7, 2]  # 6 and 7/1 were not asked for: dropped
        assert ahead.take(6, 1) is None  # already passed: the caller makes it
        assert ahead.take(8, 1).tolist() == [8, 1]
        assert ahead.take(8, 2).tolist() == [8, 2]
        assert ahead.take(9, 1) is None  # past the end: the producer has stopped
    finally:
        ahead.stop()
    assert made == [(s, k) for s in range(5, 9) for k in (1, 2)]


def test_a_failing_producer_leaves_the_block_to_the_caller() -> None:
    def produce(step: int, shard: int) -> torch.Tensor:
        raise ValueError("bad block")

    ahead = BlockPrefetcher(produce, range(1), 0, 10)
    try:
        assert ahead.take(0, 0) is None
    finally:
        ahead.stop()


@pytest.mark.parametrize(("block_bytes", "steps_each"), [(1 << 10, 8), (1 << 20, 2), (5 << 20, 1)])
def test_small_blocks_are_handed_over_several_steps_at_a_time(block_bytes, steps_each) -> None:
    """A handover carries the steps that fit in HANDOVER_BYTES (at most 8, at least 1), every
    block still comes out in order, and the last, partial handover arrives too."""
    assert sae.run.prefetch.HANDOVER_BYTES == 4 << 20
    handovers: list[int] = []

    def produce(step: int, shard: int) -> torch.Tensor:
        return torch.full((block_bytes // 4,), float(step * 10 + shard))

    ahead = BlockPrefetcher(produce, range(2), first_step=0, end_step=19)
    original_get = ahead.queue.get

    def get(*args, **kwargs):
        items = original_get(*args, **kwargs)
        handovers.append(len(items))
        return items

    ahead.queue.get = get
    try:
        for step in range(19):
            for shard in range(2):
                assert ahead.take(step, shard)[0] == step * 10 + shard
    finally:
        ahead.stop()
    per = 2 * steps_each  # blocks per handover: both shards of each step
    assert handovers == [per] * (38 // per) + ([38 % per] if 38 % per else [])


def test_stop_ends_a_producer_that_is_ahead() -> None:
    ahead = BlockPrefetcher(lambda step, shard: torch.zeros(4), range(1), 0, 10**6)
    assert ahead.take(0, 0) is not None
    ahead.stop()
    assert not ahead._thread.is_alive()


def test_spare_core_only_on_a_cpu_with_threads_to_spare(monkeypatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert spare_cpu_core(torch.device("cpu"))
    assert not spare_cpu_core(torch.device("cpu"), wanted=False)  # runtime.draw_ahead: false
    assert not spare_cpu_core(torch.device("cuda", 0))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert not spare_cpu_core(torch.device("cpu"))


def _count_takes(monkeypatch) -> list[int]:
    """Force drawing ahead on and count the blocks training took from the thread."""
    taken: list[int] = []
    original = BlockPrefetcher.take

    def take(self, step: int, shard: int):
        block = original(self, step, shard)
        taken.append(block is not None)
        return block

    monkeypatch.setattr(BlockPrefetcher, "take", take)
    return taken


def test_toy_training_drawing_ahead_equals_drawing_in_the_step(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(sae.run.prefetch, "spare_cpu_core", spare_core_is(False))
    inline = _toy(tmp_path / "inline", None)
    monkeypatch.setattr(sae.run.prefetch, "spare_cpu_core", spare_core_is(True))
    taken = _count_takes(monkeypatch)
    ahead = _toy(tmp_path / "ahead", None)
    assert len(taken) == 95 and sum(taken) >= 90  # the thread made (nearly) every block
    _assert_same_run(tmp_path / "inline", tmp_path / "ahead")
    inline.pop("throughput")
    ahead.pop("throughput")
    assert inline == ahead


@pytest.mark.parametrize("drawn_ahead", [False, True])
def test_generated_source_blocks_are_the_same_drawn_ahead(monkeypatch, drawn_ahead) -> None:
    weights = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))

    def draw(n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.relu(torch.rand(n, 6, generator=generator) @ weights)

    monkeypatch.setattr(sae.run.prefetch, "spare_cpu_core", spare_core_is(drawn_ahead))
    taken = _count_takes(monkeypatch)
    cpu = torch.device("cpu")
    source, reference = GeneratedSource(draw, 4, seed=3), GeneratedSource(draw, 4, seed=3)
    source.prepare(cpu, range(0, 2), 16, first_step=2, end_step=6)
    try:
        for step in range(2, 6):
            for shard in range(2):
                expected = reference.block(step, shard, 16, cpu)
                assert torch.equal(source.block(step, shard, 16, cpu), expected)
    finally:
        source.close()
    assert sum(taken) == (8 if drawn_ahead else 0)


def test_the_toy_draw_thread_stops_after_a_failed_fit(tmp_path: Path, monkeypatch) -> None:
    """Lightning calls no module hook after an error in a step; train_toy stops the thread."""
    import threading

    monkeypatch.setattr(sae.run.prefetch, "spare_cpu_core", spare_core_is(True))
    original = toymodels.lightning_module.ToyModelModule.train_step

    def failing(self, step: int):
        if step == 20:
            raise RuntimeError("boom")
        return original(self, step)

    monkeypatch.setattr(toymodels.lightning_module.ToyModelModule, "train_step", failing)
    with pytest.raises(RuntimeError, match="boom"):
        _toy(tmp_path / "failed", None)
    assert not [t for t in threading.enumerate() if t.name == "toy-draw" and t.is_alive()]
