"""GPU benchmark of the real ``sae`` commands, next to a bare PyTorch roof, in one short run.

Every project figure comes from the CLI itself (``python -m cli.main ...`` from this checkout,
a subprocess, ``--set runtime.accelerator=gpu --set wandb.enabled=false
--set runtime.progress_bar=false``), so it is what a user gets:

Training rates are read from the outside while the command runs: this script records when each
record of the run's ``metrics.jsonl`` appears (one every ``train.log_every`` = 100 steps; writing
it needs the step's numbers on the host, so it waits for the GPU). Steps between the second and
the last record over the time between their arrivals is the steady-state rate of training alone,
without start-up, data set-up, evaluation or saving (logging and checkpoints are included).

1. toy: the basic-results sweep (configs/toy/basic_results.yaml, 10k steps): the whole process,
   a 1-step run of the same command (start-up, evaluation, plots, saving), the steady-state
   steps/s and whole − 1-step; next to them ``bench/bare_toy_loop.py`` on the device.
2. toy1000: 1000 instances (100 log-spaced densities from 1 to 0.001, ``data.repeats=10``),
   2000 steps: whole-command wall time and steady-state steps/s.
3. sae: one april2024 SAE at d_in 768 with 4096 and with 16384 latents, batch 4096, on a 1M-row
   activation file (a planted dictionary made on the device: 16384 random unit directions, 8
   active per row with U[0, 1] codes, written with ``sae.activations.write_activation_file``):
   steady-state samples/s and the whole process.
4. sweep: the 8-λ sweep at 4096 latents, the same way, in SAE-samples/s (rows/s × 8).
5. roof: the same SAE step in a plain loop in this process (encode, decode, loss, backward,
   per-instance gradient clip 1.0, fused Adam), the data already on the device, at fp32 without
   TF32, fp32 with TF32, and bf16 autocast. Each project SAE figure is divided by the roof at
   the precision its run used, read back from the run's resolved config.yaml
   (``runtime.precision``, ``runtime.tf32``; absent keys mean fp32 without TF32).
6. eval: ``bench/bench_eval.py`` (16384 x 16384 by default) when it exists, else skipped.

The table goes to stdout, DIR/gpu_bench.md and DIR/gpu_bench.json (rewritten after every part,
so a run cut short keeps what it measured). The full run is sized for about 5 minutes on an
H200 and stops starting new work when ``--budget-s`` (default 540) runs out. It imports
neither wandb nor anything that needs installing beyond torch, lightning, safetensors, click,
numpy, scipy, matplotlib and PyYAML.

    python bench/bench_gpu.py --out DIR                    # the GPU run
    python bench/bench_gpu.py --out DIR --device cpu --tiny   # check the script on a CPU

``--extra-set KEY=VALUE`` (repeatable) is passed to every project command as ``--set``, e.g.
``--extra-set runtime.steps_per_call=1`` or ``--extra-set runtime.precision=bf16-mixed``;
``--parts`` picks parts (``--parts sae,roof``); ``--sae-precisions default,fp32,bf16-mixed``
repeats the SAE parts at each setting (``fp32``: ``runtime.precision=32-true
runtime.tf32=false``; ``tf32``; ``bf16-mixed``; each costs about 2 more minutes on an H200, so
use it with ``--parts roof,sae,sweep``); ``--hide-wandb`` makes ``import wandb`` fail in the
commands, as on a machine without it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common import add_extra_set, parser

REPO = Path(__file__).resolve().parent.parent
PARTS = ("roof", "sae", "sweep", "toy", "toy1000", "eval")
SWEEP_L1 = [0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0]  # the planted data has E‖x‖² ≈ 2.7
PRECISION_SETS = {  # --sae-precisions: the --set overrides of each setting
    "default": [],
    "fp32": ["runtime.precision=32-true", "runtime.tf32=false"],
    "tf32": ["runtime.precision=32-true", "runtime.tf32=true"],
    "bf16-mixed": ["runtime.precision=bf16-mixed"],
}
SAE_L1 = 0.5


@dataclass
class Sizes:
    toy_steps: int = 10_000
    toy1000_steps: int = 2000
    toy1000_densities: int = 100
    toy1000_repeats: int = 10
    rows: int = 1_000_000
    d_in: int = 768
    features: int = 16384
    active: int = 8
    latents: tuple[int, ...] = (4096, 16384)
    batch: int = 4096
    sae_steps: dict[int, int] = field(default_factory=lambda: {4096: 3000, 16384: 1500})
    """latents -> steps of the run"""
    sweep_latents: int = 4096
    sweep_steps: int = 800
    roof_seconds: float = 1.5
    eval_args: tuple[str, ...] = ()
    toy_extra: tuple[str, ...] = ()
    sae_extra: tuple[str, ...] = ()


TINY = Sizes(
    toy_steps=200,
    toy1000_steps=100,
    toy1000_densities=10,
    toy1000_repeats=2,
    rows=16384,
    d_in=32,
    features=256,
    active=4,
    latents=(64, 256),
    batch=256,
    sae_steps={64: 300, 256: 300},
    sweep_latents=64,
    sweep_steps=200,
    roof_seconds=0.3,
    eval_args=("--latents", "256", "--features", "256", "--d-in", "32", "--samples", "2048"),
    toy_extra=("train.eval_samples=4096", "train.log_every=20"),
    sae_extra=("train.log_every=20", "runtime.threads=1"),  # 2 threads crawl on a shared 2-core box
)


class LogClock:
    """Arrival times of the records a run appends to ``metrics.jsonl`` (one per logging step,
    every ``train.log_every`` steps). Writing a record needs the step's numbers on the host,
    so on a GPU it waits for the step: the arrivals are synchronised progress marks, and the
    steps/s between two of them is training alone (start-up, set-up and saving fall outside)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.arrivals: dict[int, float] = {}
        self._seen = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> LogClock:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._read()

    def _poll(self) -> None:
        while not self._stop.wait(0.005):
            self._read()

    def _read(self) -> None:
        try:
            size = self.path.stat().st_size
        except OSError:
            return
        seen = self._seen
        if size <= seen:
            return
        now = time.perf_counter()
        with open(self.path, "rb") as f:
            f.seek(seen)
            chunk = f.read(size - seen)
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self._seen = seen + len(complete)
        for line in complete.splitlines():
            try:
                step = int(json.loads(line)["step"])
            except (ValueError, KeyError, TypeError):
                continue
            self.arrivals.setdefault(step, now)

    def window(self, skip: int = 1) -> tuple[int, float, int, int] | None:
        """(steps, seconds, first step, last step) between the first record after ``skip``
        warm-up records and the last one; None with fewer than two records there."""
        marks = sorted(self.arrivals.items())[skip:]
        if len(marks) < 2 or marks[-1][1] <= marks[0][1]:
            return None
        (s0, t0), (s1, t1) = marks[0], marks[-1]
        return s1 - s0, t1 - t0, s0, s1


class Bench:
    """Runs the parts, keeps every row and command, rewrites the report after each part."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.sizes = TINY if args.tiny else Sizes()
        self.accelerator = "gpu" if args.device == "cuda" else "cpu"
        self.deadline = time.monotonic() + args.budget_s
        self.rows: list[dict[str, Any]] = []
        self.commands: list[dict[str, Any]] = []
        self.roof: dict[tuple[int, int, str], float] = {}
        self.env = self._child_env()
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="bench_gpu_", dir=args.workdir))

    # -- running commands -------------------------------------------------------------------
    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        paths = [str(REPO)]
        if self.args.hide_wandb:
            shim = Path(tempfile.mkdtemp(prefix="no_wandb_")) / "wandb"
            shim.mkdir()
            (shim / "__init__.py").write_text('raise ImportError("wandb is hidden by bench_gpu")\n')
            paths.insert(0, str(shim.parent))
        env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env.setdefault("WANDB_MODE", "disabled")
        return env

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def run(
        self, label: str, argv: list[str], cap_s: float = 600, out: str | None = None
    ) -> dict[str, Any]:
        """Run a command from the repo root; returns its record (wall, rc, output tails and,
        with ``out``, the steady-state ``window`` of the run's metrics.jsonl arrivals)."""
        timeout = max(1.0, min(cap_s, self.remaining()))
        record: dict[str, Any] = {"label": label, "argv": argv, "timeout_s": round(timeout)}
        log(f"[{label}] {' '.join(argv[:6])} ... (timeout {timeout:.0f} s)")
        clock = LogClock(Path(out) / "metrics.jsonl") if out is not None else None
        t0 = time.perf_counter()
        try:
            with clock or contextlib.nullcontext():
                proc = subprocess.run(
                    argv, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout
                )
            record |= {"rc": proc.returncode, "stdout": proc.stdout[-3000:]}
            record["stderr"] = proc.stderr[-3000:]
        except subprocess.TimeoutExpired as e:
            record |= {"rc": None, "timed_out": True, "stderr": _text(e.stderr)[-3000:]}
        record["wall_s"] = time.perf_counter() - t0
        if clock is not None:
            record["log_arrivals_s"] = {k: v - t0 for k, v in sorted(clock.arrivals.items())}
            record["window"] = clock.window()
        log(f"[{label}] rc {record['rc']}, {record['wall_s']:.1f} s")
        if record["rc"] != 0:
            log("  " + "\n  ".join(record.get("stderr", "").strip().splitlines()[-6:]))
        self.commands.append(record)
        return record

    def cli(self, label: str, args: list[str], sets: list[str], out: str) -> dict[str, Any]:
        """``python -m cli.main ARGS --out OUT --set ...`` with the common and extra sets."""
        common = [
            "wandb.enabled=false",
            "runtime.progress_bar=false",
            f"runtime.accelerator={self.accelerator}",
        ]
        argv = [sys.executable, "-m", "cli.main", *args, "--out", out]
        for s in common + sets + list(self.args.extra_set):
            argv += ["--set", s]
        return self.run(label, argv, out=out)

    def guarded(self, part: str, fn: Any, *args: Any) -> Any:
        """``fn(*args)``; an exception becomes a 'failed' row and the run goes on to the next
        part (a GPU lease is short: one broken part must not cost the others)."""
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001 - reported in the table, with its traceback logged
            import traceback

            log(traceback.format_exc())
            self.add(part, "not finished", None, "", note=f"failed: {type(e).__name__}: {e}"[:200])
            _free_device(self.args.device)
            return None

    def add(self, part: str, item: str, value: float | None, unit: str, **extra: Any) -> None:
        self.rows.append({"part": part, "item": item, "value": value, "unit": unit} | extra)

    def failed(self, part: str, item: str, *records: dict[str, Any]) -> bool:
        bad = [r for r in records if r["rc"] != 0]
        if bad:
            why = "timed out" if bad[0].get("timed_out") else f"exit {bad[0]['rc']}"
            tail = bad[0].get("stderr", "").strip().splitlines()[-1:] or [""]
            self.add(part, item, None, "", note=f"failed ({why}): {tail[0][:160]}")
        return bool(bad)

    # -- parts ----------------------------------------------------------------------------
    def part_toy(self) -> None:
        s, config = self.sizes, str(REPO / "configs" / "toy" / "basic_results.yaml")
        base = [f"train.steps={s.toy_steps}", *s.toy_extra]
        toy = ["toy", "train", "--config", config]
        full = self.cli("toy", toy, base, self.fresh())
        one = self.cli("toy 1 step", toy, [*base, "train.steps=1"], self.fresh())
        item = f"basic-results toy sweep (7 instances), {s.toy_steps} steps"
        if self.failed("toy", item, full, one):
            return
        bare = self.run(
            "toy bare",
            [sys.executable, str(REPO / "bench" / "bare_toy_loop.py"), "--steps", str(s.toy_steps)]
            + ["--device", self.args.device, "--out", self.fresh()],
        )
        bare_rate = None
        m = re.search(r"trained (\d+) steps in ([\d.]+) s", bare.get("stdout") or "")
        if m:
            bare_rate = int(m.group(1)) / float(m.group(2))
        self.add("toy", f"{item}: whole process", full["wall_s"], "s")
        self.add(
            "toy", "1-step run of the same command (start-up, eval, plots)", one["wall_s"], "s"
        )
        train_s = full["wall_s"] - one["wall_s"]
        rate = (s.toy_steps - 1) / train_s if train_s > 0 else None
        bare_name = "bench/bare_toy_loop.py, its training loop"
        self.add(
            "toy",
            "training, whole − 1-step run",
            rate,
            "steps/s",
            roof=bare_rate,
            roof_name=bare_name,
        )
        self.add_window("toy", "training, steady state", full, 1, "steps/s", bare_rate, bare_name)
        if bare["rc"] == 0:
            self.add("toy", "bare_toy_loop.py: whole process", bare["wall_s"], "s")

    def part_toy1000(self) -> None:
        s = self.sizes
        n = s.toy1000_densities
        densities = [10 ** (-3 * i / (n - 1)) for i in range(n)]
        sets = [
            "data.feature_probability=[" + ", ".join(f"{p:.6g}" for p in densities) + "]",
            f"data.repeats={s.toy1000_repeats}",
            f"train.steps={s.toy1000_steps}",
            *s.toy_extra,
        ]
        config = str(REPO / "configs" / "toy" / "basic_results.yaml")
        r = self.cli("toy1000", ["toy", "train", "--config", config], sets, self.fresh())
        item = f"{n * s.toy1000_repeats} toy instances, {s.toy1000_steps} steps"
        if not self.failed("toy1000", item, r):
            self.add("toy1000", f"{item}: whole process", r["wall_s"], "s")
            self.add_window("toy1000", f"{item}: training, steady state", r, 1, "steps/s")

    def add_window(
        self,
        part: str,
        item: str,
        record: dict[str, Any],
        per_step: float,
        unit: str,
        roof: float | None = None,
        roof_name: str = "",
        **extra: Any,
    ) -> None:
        """A steady-state rate from the run's metrics.jsonl arrivals (``per_step`` units a step)."""
        window = record.get("window")
        if window is None:
            self.add(part, item, None, unit, note="too few metrics.jsonl records", **extra)
            return
        steps, seconds, first, last = window
        note = f"steps {first}-{last} by metrics.jsonl arrivals"
        value = steps * per_step / seconds
        self.add(part, item, value, unit, roof=roof, roof_name=roof_name, note=note, **extra)

    def sae_rate(
        self, part: str, label: str, latents: int, l1: list[float], steps: int, setting: str
    ) -> None:
        s = self.sizes
        if setting != "default":
            label += f" [{setting}]"
        sets = [
            *PRECISION_SETS[setting],
            f"sae.d_sae={latents}",
            "sae.recipe=april2024",
            "sweep.l1_coefficient=[" + ", ".join(str(v) for v in l1) + "]",
            f"train.batch_size={s.batch}",
            f"train.steps={steps}",
            *s.sae_extra,
        ]
        out = self.fresh()
        r = self.cli(label, ["train", "--activations", str(self.acts)], sets, out)
        item = f"{label}: training, steady state"
        if self.failed(part, item, r):
            return
        precision, runtime = self.run_precision(Path(out))
        roof = self.roof.get((len(l1), latents, precision)) if precision else None
        unit = "SAE-samples/s" if len(l1) > 1 else "samples/s"
        self.add_window(
            part,
            item,
            r,
            s.batch * len(l1),
            unit,
            roof * len(l1) if roof else None,
            f"roof {precision}" if precision else "no matching roof",
            precision=precision,
            runtime=runtime,
        )
        self.add(part, f"{label}: whole process, {steps} steps", r["wall_s"], "s")
        shutil.rmtree(Path(out).parent, ignore_errors=True)  # checkpoints of big SAEs add up

    def part_sae(self) -> None:
        for setting in self.args.sae_precisions:
            for latents in self.sizes.latents:
                label = f"1 SAE, {latents} latents"
                steps = self.sizes.sae_steps[latents]
                self.sae_rate("sae", label, latents, [SAE_L1], steps, setting)

    def part_sweep(self) -> None:
        s = self.sizes
        label = f"8-λ sweep, {s.sweep_latents} latents"
        for setting in self.args.sae_precisions:
            self.sae_rate("sweep", label, s.sweep_latents, SWEEP_L1, s.sweep_steps, setting)

    def part_eval(self) -> None:
        script = REPO / "bench" / "bench_eval.py"
        if not script.exists():
            self.add("eval", "sae eval 16384 x 16384", None, "", note="skipped: no bench_eval.py")
            return
        help_run = self.run("eval --help", [sys.executable, str(script), "--help"])
        help_text = help_run.get("stdout") or ""
        argv = [sys.executable, str(script)]
        if "--accelerator" in help_text:
            argv += ["--accelerator", self.accelerator]
        argv += [a for a in self.sizes.eval_args if not a.startswith("--") or a in help_text]
        r = self.run("eval", argv)
        size = "x".join(self.sizes.eval_args[1:4:2]) if self.args.tiny else "16384 x 16384"
        item = f"bench/bench_eval.py ({size})"
        if self.failed("eval", item, r):
            return
        m = re.search(r"evaluate_sae ([\d.]+) s, write_eval ([\d.na]+) s", r["stdout"])
        if m:
            self.add("eval", f"{item}: evaluate_sae", float(m.group(1)), "s")
            self.add("eval", f"{item}: write_eval (json + plots)", _float(m.group(2)), "s")
        self.add("eval", f"{item}: whole process", r["wall_s"], "s")

    # -- data and roof (in this process) ---------------------------------------------------
    def make_data(self) -> Any:
        """The planted activation file; returns the rows on the device (for the roof)."""
        import torch

        from sae.activations import write_activation_file

        s, device = self.sizes, torch.device(self.args.device)
        t0 = time.perf_counter()
        g = torch.Generator(device=device).manual_seed(0)
        dictionary = torch.randn(s.features, s.d_in, device=device, generator=g)
        dictionary /= dictionary.norm(dim=-1, keepdim=True)
        data = torch.empty(s.rows, s.d_in, device=device)
        chunk = 32768
        for start in range(0, s.rows, chunk):
            n = min(chunk, s.rows - start)
            idx = torch.randint(s.features, (n, s.active), device=device, generator=g)
            codes = torch.rand(n, s.active, device=device, generator=g)
            data[start : start + n] = torch.einsum("nk,nkd->nd", codes, dictionary[idx])
        _sync(device)
        made = time.perf_counter() - t0
        self.acts = self.work / "acts.safetensors"
        t0 = time.perf_counter()
        write_activation_file(
            self.acts,
            data.cpu(),
            ground_truth=dictionary.cpu(),
            feature_probability=torch.full((s.features,), s.active / s.features),
            info={"source": "bench_gpu planted dictionary", "active_per_row": s.active},
        )
        written = time.perf_counter() - t0
        size = self.acts.stat().st_size / 2**30
        note = f"made on {device} in {made:.1f} s, written in {written:.1f} s ({size:.2f} GiB)"
        self.add("data", f"{s.rows:,} x {s.d_in} activation file", made + written, "s", note=note)
        return data

    def part_roof(self, data: Any) -> None:
        import torch

        s = self.sizes
        if data.device.type == "cpu":  # one thread: a shared CPU's cores are oversubscribed
            torch.set_num_threads(1)
        configs = [(1, n) for n in s.latents] + [(len(SWEEP_L1), s.sweep_latents)]
        for n_inst, latents in configs:
            for precision in ("fp32", "tf32", "bf16"):
                if self.remaining() < 30:
                    self.add("roof", "remaining roofs", None, "", note="skipped: out of budget")
                    return
                rate = roof_rate(data, n_inst, latents, s.batch, precision, s.roof_seconds)
                self.roof[(n_inst, latents, precision)] = rate
                what = f"{n_inst} SAE" if n_inst == 1 else f"{n_inst}-λ sweep"
                unit = "samples/s" if n_inst == 1 else "SAE-samples/s"
                self.add(
                    "roof",
                    f"bare loop, {what}, {latents} latents, {precision}",
                    rate * n_inst,
                    unit,
                )

    # -- helpers --------------------------------------------------------------------------
    def fresh(self) -> str:
        return str(Path(tempfile.mkdtemp(dir=self.work)) / "run")

    def run_precision(self, run_dir: Path) -> tuple[str | None, dict[str, Any]]:
        """The roof precision matching the run's resolved runtime config."""
        import yaml

        try:
            runtime = (yaml.safe_load((run_dir / "config.yaml").read_text()) or {})["runtime"]
        except (OSError, KeyError, TypeError, yaml.YAMLError):
            return None, {}
        keep = ("accelerator", "precision", "tf32", "cuda_graphs", "steps_per_call", "threads")
        runtime = {k: runtime[k] for k in keep if k in runtime}
        precision = str(runtime.get("precision") or "32-true")
        if precision in ("32-true", "32"):
            tf32 = bool(runtime.get("tf32")) and self.args.device == "cuda"
            return ("tf32" if tf32 else "fp32"), runtime
        return ("bf16" if precision == "bf16-mixed" else None), runtime

    def report(self) -> str:
        lines = [
            "| part | measurement | figure | unit | roof (same precision) | project / roof "
            "| note |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            value, roof = r["value"], r.get("roof")
            ratio = f"{value / roof:.2f}" if value and roof else ""
            note = r.get("note", "")
            if r.get("runtime"):
                note = (note + "; " if note else "") + _runtime_text(r["runtime"])
            lines.append(
                f"| {r['part']} | {r['item']} | {_fmt(value)} | {r['unit']} | "
                f"{_fmt(roof)}{' (' + r['roof_name'] + ')' if roof else ''} | {ratio} | {note} |"
            )
        return "\n".join(lines)

    def write(self, header: str) -> None:
        text = header + "\n\n" + self.report() + "\n"
        (self.out / "gpu_bench.md").write_text(text)
        payload = {
            "header": header,
            "args": vars(self.args),
            "sizes": {
                k: (str(v) if isinstance(v, dict) else v) for k, v in asdict(self.sizes).items()
            },
            "rows": self.rows,
            "commands": self.commands,
            "wandb_imported_by_bench": "wandb" in sys.modules,
        }
        (self.out / "gpu_bench.json").write_text(json.dumps(payload, indent=2, default=str))


def roof_rate(
    data: Any, n_inst: int, latents: int, batch: int, precision: str, seconds: float
) -> float:
    """Rows/s of a bare SAE step loop: batch drawn from ``data`` on its device, april2024 step,
    per-instance clip 1.0, (fused on CUDA) Adam; ``precision`` fp32, tf32 or bf16 (autocast)."""
    import torch

    device = data.device
    d = data.shape[1]
    g = torch.Generator(device=device).manual_seed(0)
    W_dec = torch.randn(n_inst, latents, d, device=device, generator=g)
    W_dec = W_dec / W_dec.norm(dim=-1, keepdim=True) * 0.1
    W_enc = W_dec.transpose(1, 2).contiguous().requires_grad_()
    W_dec.requires_grad_()
    b_enc = torch.zeros(n_inst, latents, device=device, requires_grad=True)
    b_dec = data[:8192].mean(0).expand(n_inst, d).clone().requires_grad_()
    params = [W_enc, W_dec, b_enc, b_dec]
    l1 = torch.tensor(SWEEP_L1[:n_inst] if n_inst > 1 else [SAE_L1], device=device)
    optimizer = torch.optim.Adam(params, lr=1e-3, fused=device.type == "cuda")
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if precision == "bf16"
        else contextlib.nullcontext()
    )

    def step() -> None:
        index = torch.randint(data.shape[0], (batch,), device=device, generator=g)
        x = data.index_select(0, index)
        with autocast:
            bias = b_enc - torch.einsum("id,ids->is", b_dec, W_enc)
            f = torch.relu(torch.matmul(x, W_enc) + bias[:, None, :])
            x_hat = torch.baddbmm(b_dec[:, None, :], f, W_dec)
            rec = (x_hat.float() - x).square().sum(-1).mean(-1)
            sparsity = (f.sum(1).float() * W_dec.norm(dim=-1)).sum(-1) / batch
            loss = (rec + l1 * sparsity).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            sq = torch.stack([p.grad.reshape(n_inst, -1).square().sum(1) for p in params])
            scale = (1.0 / (sq.sum(0).sqrt() + 1e-6)).clamp_(max=1.0)
            for p in params:
                p.grad.mul_(scale.view(-1, *[1] * (p.dim() - 1)))
        optimizer.step()

    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        for _ in range(5):
            step()
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(5):
            step()
        _sync(device)
        n = max(10, int(seconds / max((time.perf_counter() - t0) / 5, 1e-6)))
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        _sync(device)
        return n * batch / (time.perf_counter() - t0)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value or ""


def _float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return None if math.isnan(value) else value


def _fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}" if value < 10 else f"{value:.1f}"


def _runtime_text(runtime: dict[str, Any]) -> str:
    return "run: " + ", ".join(f"{k}={v}" for k, v in runtime.items() if k != "accelerator")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def environment(device: str) -> str:
    import torch

    where = platform.machine()
    if device == "cuda" and torch.cuda.is_available():
        where = f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    elif device == "cuda":
        sys.exit("--device cuda but torch sees no CUDA device (use --device cpu --tiny here)")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        commit = ""
    return (
        f"{where}; torch {torch.__version__}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPU cores, load average {load:.2f}; checkout {commit or 'unknown'}"
    )


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--out", required=True, help="folder for gpu_bench.md and gpu_bench.json")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes: checks the script, fast")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    ap.add_argument("--budget-s", type=float, default=540, help="no new work after this")
    ap.add_argument("--workdir", default=None, help="scratch folder (the 3 GB file goes here)")
    ap.add_argument("--hide-wandb", action="store_true", help="make `import wandb` fail")
    ap.add_argument(
        "--sae-precisions",
        default="default",
        help=f"comma list of {', '.join(PRECISION_SETS)}: SAE runs at each (default: the "
        "project's defaults, no --set)",
    )
    add_extra_set(ap, "passed to every project command as --set KEY=VALUE (repeatable)")
    args = ap.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        ap.error(f"unknown parts: {', '.join(sorted(unknown))}")
    args.sae_precisions = [p.strip() for p in args.sae_precisions.split(",") if p.strip()]
    unknown = set(args.sae_precisions) - set(PRECISION_SETS)
    if unknown:
        ap.error(f"unknown --sae-precisions: {', '.join(sorted(unknown))}")
    sys.path.insert(0, str(REPO))  # this checkout's project code, installed or not

    where = environment(args.device)  # exits here when --device cuda has no CUDA device
    bench = Bench(args)
    s = bench.sizes
    header = (
        f"# bench_gpu ({'tiny, ' if args.tiny else ''}device {args.device})\n\n"
        f"{where}. Project commands: `python -m cli.main ... --set "
        f"runtime.accelerator={bench.accelerator}`; extra --set: "
        f"{', '.join(args.extra_set) or 'none'}. SAEs: d_in {s.d_in}, batch {s.batch}, "
        f"april2024, {s.rows:,}-row planted file ({s.features} features, {s.active} active "
        "per row). project / roof is a ratio of rates (above 1: the project is faster)."
    )
    t_start = time.perf_counter()
    try:
        data = None
        if {"roof", "sae", "sweep"} & set(parts):
            data = bench.guarded("data", bench.make_data)
        if "roof" in parts and data is not None:
            bench.guarded("roof", bench.part_roof, data)
            bench.write(header)
        if data is not None:
            del data
            _free_device(args.device)
        for name in PARTS[1:]:
            if name not in parts:
                continue
            if bench.remaining() < 20:
                bench.add(name, "not run", None, "", note="skipped: out of --budget-s")
                continue
            bench.guarded(name, getattr(bench, f"part_{name}"))
            bench.write(header)
    finally:
        header += f" Wall time of the whole benchmark: {time.perf_counter() - t_start:.0f} s."
        bench.write(header)
        shutil.rmtree(bench.work, ignore_errors=True)
    print(header + "\n\n" + bench.report())
    print(f"\nwrote {bench.out / 'gpu_bench.md'} and {bench.out / 'gpu_bench.json'}")


def _free_device(device: str) -> None:
    import gc

    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
