"""A width sweep in one batched run against the same widths trained one run at a time.

python bench/bench_width_sweep.py          # 1 thread; planted data, 3000 steps each
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from synthetic import file_source, sae_config, write_planted_file  # noqa: E402

from sae.train import train_saes  # noqa: E402

WIDTHS = [16, 32, 64, 128]


def run(path: Path, widths: list[int], out: Path) -> float:
    config = sae_config(
        sae={"recipe": "constrained", "b_dec_init": "geometric_median"},
        sweep={"l1_coefficient": [0.3], "d_sae": widths, "seed": [0]},
        train={"steps": 3000, "batch_size": 512, "log_every": 500, "checkpoint_every": 10**9},
    )
    start = time.perf_counter()
    train_saes(config, file_source(path, config), out)
    return time.perf_counter() - start


def main() -> None:
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp())
    path = tmp / "planted.safetensors"
    write_planted_file(path, n_features=32, d=16, n_rows=60_000, p=0.05, seed=100)
    for rep in range(2):
        batched = run(path, WIDTHS, tmp / f"batched{rep}")
        separate = sum(run(path, [w], tmp / f"alone{rep}_{w}") for w in WIDTHS)
        print(
            f"rep {rep}: widths {WIDTHS} in one batched run {batched:.1f} s, "
            f"in {len(WIDTHS)} separate runs {separate:.1f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
