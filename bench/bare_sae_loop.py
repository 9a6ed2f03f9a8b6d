"""A plain PyTorch training loop for one L1 SAE (april2024 recipe), with no project code.

The reference that ``bench/bench_cli_vs_bare.py`` times against ``sae train``: it loads the
activation file's ``activations`` tensor into memory (safetensors), keeps the last 10% of the
rows out as the project does, and trains on random batches of the rest:

- f = ReLU(x W_enc + b_enc − b_dec W_enc), x̂ = f W_dec + b_dec;
- loss = ‖x − x̂‖² summed over dimensions, mean over the batch
  + λ · Σ_i f_i ‖W_dec,i‖, mean over the batch;
- init: decoder rows random with norm 0.1, W_enc = W_decᵀ, b_dec = mean of 8192 rows;
- ``torch.optim.Adam(lr=1e-3)``, gradient-norm clip 1.0;
- at the end: the weights with safetensors and a small JSON.

    python bench/bare_sae_loop.py --activations acts.safetensors --out /tmp/bare_sae --steps 2000

It depends on torch and safetensors only (and, for its command line, on ``common.py`` in this
folder, which needs only the standard library to import).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from common import add_device_flags, parser
from safetensors.torch import load_file, save_file


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--activations", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--d-sae", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--l1", type=float, default=0.3)
    ap.add_argument("--lr", type=float, default=1e-3)
    add_device_flags(ap)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    acts = load_file(str(args.activations))["activations"]
    n_train = acts.shape[0] - int(acts.shape[0] * 0.1)
    data = acts[:n_train].to(device)
    d_in = data.shape[1]

    torch.manual_seed(args.seed)
    directions = torch.randn(args.d_sae, d_in)
    W_dec = (directions / directions.norm(dim=-1, keepdim=True) * 0.1).to(device)
    W_enc = W_dec.t().contiguous().requires_grad_()
    W_dec.requires_grad_()
    b_enc = torch.zeros(args.d_sae, device=device, requires_grad=True)
    b_dec = data[:8192].mean(0).clone().requires_grad_()
    params = [W_enc, W_dec, b_enc, b_dec]
    optimizer = torch.optim.Adam(params, lr=args.lr)
    generator = torch.Generator(device=device).manual_seed(args.seed)

    t0 = time.perf_counter()
    loss = torch.zeros(())
    for _ in range(args.steps):
        index = torch.randint(n_train, (args.batch_size,), device=device, generator=generator)
        x = data[index]
        f = torch.relu(x @ W_enc + (b_enc - b_dec @ W_enc))
        x_hat = f @ W_dec + b_dec
        reconstruction = (x_hat - x).square().sum(-1).mean()
        sparsity = (f * W_dec.norm(dim=-1)).sum(-1).mean()
        loss = reconstruction + args.l1 * sparsity
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
    train_s = time.perf_counter() - t0

    args.out.mkdir(parents=True, exist_ok=True)
    weights = {"W_enc": W_enc, "W_dec": W_dec, "b_enc": b_enc, "b_dec": b_dec}
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in weights.items()},
        str(args.out / "sae_weights.safetensors"),
    )
    record = {"steps": args.steps, "train_seconds": train_s, "final_loss": float(loss)}
    (args.out / "metrics.json").write_text(json.dumps(record, indent=2))
    print(f"trained {args.steps} steps in {train_s:.2f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
