"""Scoring throughput of ``sae eval``: one large SAE against as many true features.

Setting (sizes are flags): ``--features`` random unit ground-truth directions in ``--d-in``
dimensions; an SAE with ``--latents`` latents whose decoder rows are noisy copies of the true
directions (latent j ~ feature j mod n_features, cosine about 0.95), so matching, splits and
detection statistics have real work to do; its encoder is the decoder's transpose with a
negative bias, so codes are sparse. The activation sample is ``--samples`` rows of sparse true
codes (each feature on with probability ``--p``) times the ground truth, in batches of
``--batch-size``. Everything is planted on the scoring device before the clock starts.

The timed code is what ``sae eval`` runs per SAE after loading it: ``evaluate_sae`` (cosines,
matching, per-feature / per-latent tables, reconstruction statistics) and ``write_eval``
(eval_stats.json and the two plots, into a temporary folder), on ``--accelerator``.

    python bench/bench_eval.py --latents 2048 --features 2048
    python bench/bench_eval.py --repeats 2           # 16384 x 16384, d_in 768, auto device

On a GPU the first repeat includes CUDA start-up; read the second. The script also runs on a
checkout from before ``sae eval --accelerator`` (it then scores wherever the data lies), which
is how the "before" numbers were taken. It needs torch, numpy, scipy and matplotlib, not wandb
and not an installed package (the repository root is put on ``sys.path``).
"""

from __future__ import annotations

import argparse
import inspect
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sae.evaluate import evaluate_sae, write_eval  # noqa: E402
from sae.model import SparseAutoencoder  # noqa: E402


def resolve(accelerator: str) -> torch.device:
    try:  # the CLI's own resolution when this checkout has it
        from sae.evaluate import resolve_device

        return resolve_device(accelerator)
    except ImportError:
        if accelerator == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device("cuda" if accelerator == "gpu" else accelerator)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plant(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    g = torch.Generator(device=device).manual_seed(args.seed)
    nf, nl, d = args.features, args.latents, args.d_in
    gt = torch.randn(nf, d, generator=g, device=device)
    gt /= gt.norm(dim=1, keepdim=True)
    noise = torch.randn(nl, d, generator=g, device=device)
    dec = gt[torch.arange(nl, device=device) % nf] + 0.33 * noise / noise.norm(dim=1, keepdim=True)
    dec /= dec.norm(dim=1, keepdim=True)
    sae = SparseAutoencoder(1, d, nl, "constrained", seeds=[0], decoder_init_norm=1.0)
    with torch.no_grad():
        sae.W_dec.copy_(dec[None].cpu())
        sae.W_enc.copy_(dec.T[None].cpu())
        sae.b_enc.fill_(-0.3)
    sae = sae.to(device)
    represented = torch.rand(nf, generator=g, device=device) < 0.9
    batches = []
    for start in range(0, args.samples, args.batch_size):
        b = min(args.batch_size, args.samples - start)
        on = torch.rand(b, nf, generator=g, device=device) < args.p
        codes = on * torch.rand(b, nf, generator=g, device=device)
        batches.append((codes @ gt, codes))
    return {"sae": sae, "gt": gt, "represented": represented.cpu(), "batches": batches}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--latents", type=int, default=16384)
    p.add_argument("--features", type=int, default=16384)
    p.add_argument("--d-in", type=int, default=768)
    p.add_argument("--samples", type=int, default=16384, help="activation rows scored")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--p", type=float, default=0.002, help="feature firing probability")
    p.add_argument("--accelerator", default="auto", help="auto, cpu, gpu or cuda")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--no-plots", action="store_true", help="time evaluate_sae only")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = resolve(args.accelerator)
    except Exception as e:  # UsageError: that device is not here
        sys.exit(f"error: {e}")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(
        f"device {device} ({name or platform.machine()}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {args.features} features x {args.latents} latents, "
        f"d_in {args.d_in}, {args.samples} samples"
    )
    t0 = time.perf_counter()
    data = plant(args, device)
    sync(device)
    print(f"planted in {time.perf_counter() - t0:.2f} s")
    kwargs = {"device": device} if "device" in inspect.signature(evaluate_sae).parameters else {}
    for r in range(args.repeats):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        result = evaluate_sae(
            data["sae"], data["gt"], iter(data["batches"]), data["represented"], **kwargs
        )
        sync(device)
        t_eval = time.perf_counter() - t0
        t_write = 0.0
        if "cos" in result:  # a checkout from before: its plots read the whole matrix on the host
            result["cos"] = result["cos"].cpu()
        if not args.no_plots:
            with tempfile.TemporaryDirectory() as folder:
                t0 = time.perf_counter()
                write_eval(folder, result, title="bench")
                t_write = time.perf_counter() - t0
        peak = (
            f", peak device memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
            if device.type == "cuda"
            else ""
        )
        s = result["scalars"]
        print(
            f"repeat {r}: evaluate_sae {t_eval:.2f} s, write_eval {t_write:.2f} s, "
            f"total {t_eval + t_write:.2f} s{peak}  "
            f"(all/mcc {s['all/mcc']:.4f}, all/mmcs {s['all/mmcs']:.4f}, "
            f"explained_variance {s['explained_variance']:.4f}, sae_l0 {s['sae_l0']:.1f})"
        )


if __name__ == "__main__":
    main()
