"""The one place that names the files of a run folder.

Every run (toy model, SAE sweep, whole pipeline) writes into one folder; ``RunDir`` knows what
lives where, so no other module spells a file name. An SAE sweep's folder also holds one
``sae_<k>/`` folder per SAE (``SAEDir``); a pipeline folder holds a toy run, the exported
activations and an SAE run (``PipelineDir``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path


class RunDir:
    """A run folder and the files training and scoring write into it."""

    CONFIG = "config.yaml"
    """The resolved config; feeding it back reproduces the run."""
    RECORD = "run.json"
    """An SAE run's record: its SAE folders, data source, hold-out split, devices, wandb run."""
    METRICS = "metrics.json"
    """A toy run's final per-instance metrics."""
    METRICS_LOG = "metrics.jsonl"
    """Every logged scalar, one line per logging step."""
    CHECKPOINTS = "checkpoints"
    LAST_CHECKPOINT = "last.ckpt"
    RESUME_FROM = f"{CHECKPOINTS}/{LAST_CHECKPOINT}"
    """What ``--resume`` continues from, as messages name it."""
    MODEL = "model.safetensors"
    """A toy run's weights (the best restart of each instance) with its config."""
    REPORT = "report.md"
    PHASE = "phase.json"
    """A toy phase-diagram run's labels: trained and closed-form, per (r, density) point."""
    PHASE_FIGURE = "phase_diagram"
    """The phase diagram's name in ``plots/`` (``plot(PHASE_FIGURE)``)."""
    DYNAMICS = "dynamics.safetensors"
    """A toy run's learning-dynamics snapshots (``train.snapshot_every``)."""
    SELECTION = "selection.json"
    """``sae select``'s choice of one SAE of the run, its method and signals."""
    PLOTS = "plots"
    WANDB = "wandb"
    MARKERS = (CONFIG, CHECKPOINTS, METRICS, MODEL, REPORT)
    """Files whose presence means a folder already holds a run."""
    OUTPUT_FILES = (
        CONFIG,
        RECORD,
        METRICS,
        METRICS_LOG,
        MODEL,
        REPORT,
        PHASE,
        DYNAMICS,
        SELECTION,
    )
    """Files a toy or SAE run writes at the top of its folder."""
    OUTPUT_FOLDERS = (CHECKPOINTS, PLOTS, WANDB)
    """Folders a run writes and owns whole (``--overwrite`` removes them with all they hold)."""
    SAE_FOLDER = re.compile(r"sae_\d+")

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    @property
    def config(self) -> Path:
        return self.root / self.CONFIG

    @property
    def record(self) -> Path:
        return self.root / self.RECORD

    @property
    def metrics(self) -> Path:
        return self.root / self.METRICS

    @property
    def selection(self) -> Path:
        return self.root / self.SELECTION

    @property
    def metrics_log(self) -> Path:
        return self.root / self.METRICS_LOG

    @property
    def checkpoints(self) -> Path:
        return self.root / self.CHECKPOINTS

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / self.LAST_CHECKPOINT

    @property
    def model(self) -> Path:
        return self.root / self.MODEL

    @property
    def report(self) -> Path:
        return self.root / self.REPORT

    @property
    def plots(self) -> Path:
        return self.root / self.PLOTS

    def plot(self, name: str) -> Path:
        """The PNG of figure ``name`` in ``plots/`` (``name`` is also its wandb key,
        ``plots/<name>``)."""
        return self.plots / f"{name}.png"

    @property
    def phase(self) -> Path:
        return self.root / self.PHASE

    @property
    def dynamics(self) -> Path:
        return self.root / self.DYNAMICS

    @property
    def wandb(self) -> Path:
        return self.root / self.WANDB

    def sae(self, k: int) -> SAEDir:
        """The folder of SAE ``k`` of a sweep."""
        return SAEDir(self.root / f"sae_{k}")

    def holds_run(self) -> bool:
        return self.root.is_dir() and any((self.root / m).exists() for m in self.MARKERS)

    def stored_path(self, path: str | Path) -> str:
        """``path`` as this run's files keep it: relative to the run folder, so the run still
        finds it from another working directory, or after both moved together."""
        return os.path.relpath(Path(path).absolute(), self.root.absolute())

    def find_path(self, stored: str | Path, absolute: str | Path | None = None) -> Path:
        """A path read from this run's files, usable from here: a relative one is relative to
        the run folder; an absolute one stands. A relative path not found there is looked for
        at ``absolute`` (where it was at training time: the run folder moved without its data),
        then from the working directory (old runs kept paths as given on the command line)."""
        path = Path(stored)
        if path.is_absolute():
            return path
        here = self.root / path
        if not here.exists():
            for other in (Path(absolute) if absolute else None, path):
                if other is not None and other.exists():
                    return other
        return here

    def finished(self) -> bool:
        """Training is over and its results are written: an SAE run's ``run.json``, or a toy
        run's ``model.safetensors`` and ``metrics.json``."""
        return self.record.is_file() or (self.model.is_file() and self.metrics.is_file())

    def outputs(self) -> tuple[list[Path], list[Path]]:
        """The entries of the folder a run of this kind writes (what ``--overwrite`` may
        remove), and every other file in it (what it must not), both sorted. A run folder
        owns ``checkpoints/``, ``plots/`` and ``wandb/`` whole; an ``sae_<k>/`` folder only
        while it holds nothing but SAE files."""
        owned: list[Path] = []
        foreign: list[Path] = []
        if self.root.is_dir():
            for entry in sorted(self.root.iterdir()):
                mine, strangers = self._classify(entry)
                if strangers:
                    foreign += strangers
                else:
                    (owned if mine else foreign).append(entry)
        return owned, sorted(foreign)

    def _classify(self, entry: Path) -> tuple[bool, list[Path]]:
        """(whether ``entry`` is this run's output, foreign files inside it)."""
        name, is_dir = entry.name, entry.is_dir() and not entry.is_symlink()
        if not is_dir:
            return name in self.OUTPUT_FILES, []
        if name in self.OUTPUT_FOLDERS:
            return True, []
        if self.SAE_FOLDER.fullmatch(name):
            return True, [p for p in sorted(entry.iterdir()) if p.name not in SAEDir.FILES]
        return False, []


class SAEDir:
    """One SAE's folder, in SAELens's layout, with its scores beside it."""

    WEIGHTS = "sae_weights.safetensors"
    CFG = "cfg.json"
    EVAL_STATS = "eval_stats.json"
    COSINE_HEATMAP = "cosine_heatmap.png"
    BEST_COSINE_HIST = "best_cosine_hist.png"
    FILES = (WEIGHTS, CFG, EVAL_STATS, COSINE_HEATMAP, BEST_COSINE_HIST)
    """Everything training and scoring write into an SAE's folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def weights(self) -> Path:
        return self.root / self.WEIGHTS

    @property
    def cfg(self) -> Path:
        return self.root / self.CFG

    @property
    def eval_stats(self) -> Path:
        return self.root / self.EVAL_STATS

    @property
    def cosine_heatmap(self) -> Path:
        return self.root / self.COSINE_HEATMAP

    @property
    def best_cosine_hist(self) -> Path:
        return self.root / self.BEST_COSINE_HIST


class PipelineDir(RunDir):
    """``sae run``'s folder: its config and report, and one folder or file per stage."""

    TOY = "toy"
    ACTIVATIONS = "activations.safetensors"
    SAE = "sae"

    def finished(self) -> bool:
        """Every stage ran and the report is written."""
        return self.report.is_file()

    def _classify(self, entry: Path) -> tuple[bool, list[Path]]:
        if entry.name == self.ACTIVATIONS and not entry.is_dir():
            return True, []
        if entry.name in (self.TOY, self.SAE) and entry.is_dir() and not entry.is_symlink():
            return True, RunDir(entry).outputs()[1]
        return super()._classify(entry)

    @property
    def toy(self) -> RunDir:
        return RunDir(self.root / self.TOY)

    @property
    def activations(self) -> Path:
        return self.root / self.ACTIVATIONS

    @property
    def sae_run(self) -> RunDir:
        return RunDir(self.root / self.SAE)
