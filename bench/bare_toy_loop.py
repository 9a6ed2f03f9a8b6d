"""A plain PyTorch training loop for the paper's basic-results toy sweep, with no project code.

It does the work of ``sae toy train --config configs/toy/basic_results.yaml`` by hand, as the
reference that ``bench/bench_cli_vs_bare.py`` times against the real command:

- model: the ReLU-output toy model with an instances dimension, W [inst, n, m] (Xavier-normal),
  b [inst, n] (zeros), h = W x, x' = ReLU(Wᵀ h + b);
- data: feature i is zero with probability 1 − p, else U[0, 1], drawn with ``torch.rand`` on the
  device every step (one uniform draw per element: u < p is the on/off event and u / p the
  magnitude, the same amount of random numbers as the project draws);
- loss: importance-weighted squared error (I_i = 0.7^i), mean over batch and features, summed
  over instances; ``torch.optim.AdamW(lr=1e-3, weight_decay=0.01)``, 1 torch thread;
- at the end: the weights with safetensors and a small JSON of final losses.

    python bench/bare_toy_loop.py --out /tmp/bare_toy --steps 10000

It depends on torch and safetensors only (and, for its command line, on ``common.py`` in this
folder, which needs only the standard library to import).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from common import add_device_flags, parser
from safetensors.torch import save_file

DENSITIES = [1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001]  # 1 - S, one instance each


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--out", type=Path, required=True, help="folder for the weights and json")
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--n-features", type=int, default=20)
    ap.add_argument("--n-hidden", type=int, default=5)
    add_device_flags(ap)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    inst, n, m = len(DENSITIES), args.n_features, args.n_hidden
    torch.manual_seed(args.seed)
    std = math.sqrt(2.0 / (n + m))
    W = (torch.randn(inst, n, m) * std).to(device).requires_grad_()
    b = torch.zeros(inst, n, device=device, requires_grad=True)
    p = torch.tensor(DENSITIES, device=device)[:, None].expand(inst, n)
    importance = (0.7 ** torch.arange(n, dtype=torch.float32, device=device)).expand(inst, n)
    optimizer = torch.optim.AdamW([W, b], lr=1e-3, weight_decay=0.01)
    generator = torch.Generator(device=device).manual_seed(args.seed)

    t0 = time.perf_counter()
    per_instance = torch.zeros(inst)
    for _ in range(args.steps):
        u = torch.rand((args.batch_size, inst, n), device=device, generator=generator)
        x = torch.where(u < p, u / p, 0.0)
        h = torch.einsum("bif,ifh->bih", x, W)
        out = torch.relu(torch.einsum("bih,ifh->bif", h, W) + b)
        per_instance = (importance * (out - x).square()).mean(dim=(0, 2))
        loss = per_instance.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    train_s = time.perf_counter() - t0

    args.out.mkdir(parents=True, exist_ok=True)
    save_file({"W": W.detach().cpu(), "b": b.detach().cpu()}, str(args.out / "model.safetensors"))
    record = {
        "steps": args.steps,
        "train_seconds": train_s,
        "feature_probability": DENSITIES,
        "loss": per_instance.detach().cpu().tolist(),
    }
    (args.out / "metrics.json").write_text(json.dumps(record, indent=2))
    print(f"trained {args.steps} steps in {train_s:.2f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
