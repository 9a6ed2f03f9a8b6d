"""Atomic file output: write to a temporary file in the same folder, then rename.

A crash or an interrupt never leaves a half-written file under the real name, and an
existing file is replaced in one step (``os.replace`` is atomic on POSIX).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; match a normal open()
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_figure(fig: Any, path: str | os.PathLike, tight: bool | None = None) -> None:
    """Save a matplotlib figure as PNG atomically and close it. ``tight``: crop to what is
    drawn, which costs a second (layout) draw; by default only figures without a layout engine
    are cropped (an engine already fits everything in). A figure whose axes are placed by hand
    passes False and has no engine: matplotlib runs the extra draw for any engine at all."""
    import matplotlib.pyplot as plt

    if tight is None:
        tight = fig.get_layout_engine() is None
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight" if tight else None)
    plt.close(fig)
