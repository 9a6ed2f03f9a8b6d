"""The activation-file contract: activations plus (optional) ground truth in one safetensors file.

Tensors (all little-endian, C order):

==================== ======================== =============================================
name                 shape, dtype             meaning
==================== ======================== =============================================
activations          [N, d] float32           what the SAE trains on (required)
ground_truth         [n_features, d] float32  true feature directions, one per row
feature_probability  [n_features] float32     how often each feature is nonzero
represented          [n_features] uint8       1 where the model represents the feature
feature_acts         [N, n_features] float32  the true codes of each row
==================== ======================== =============================================

The safetensors metadata holds ``format`` = ``sae-toolkit/activations``, ``version`` and
``info``, a JSON string (model kind, config, instance, feature names...). Everything except
``activations`` is optional, so activations from anywhere fit; scoring needs ground_truth.

Reading memory-maps the file: a training run touches only the rows it draws.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sae.run.errors import UsageError
from sae.run.files import atomic_path

FORMAT = "sae-toolkit/activations"
VERSION = "1"
_DTYPES = {
    "F32": np.float32,
    "F64": np.float64,
    "F16": np.float16,
    "BF16": None,
    "U8": np.uint8,
    "I64": np.int64,
    "I32": np.int32,
    "BOOL": np.bool_,
}
_EXPECTED = {
    "activations": "F32",
    "ground_truth": "F32",
    "feature_probability": "F32",
    "represented": "U8",
    "feature_acts": "F32",
}


def write_activation_file(
    path: str | Path,
    activations: Tensor,
    ground_truth: Tensor | None = None,
    feature_probability: Tensor | None = None,
    represented: Tensor | None = None,
    feature_acts: Tensor | None = None,
    info: dict[str, Any] | None = None,
) -> None:
    """Write the contract atomically (temporary file, then rename)."""
    from safetensors.torch import save_file

    tensors = {"activations": activations.detach().float().contiguous().cpu()}
    optional = {
        "ground_truth": ground_truth,
        "feature_probability": feature_probability,
        "feature_acts": feature_acts,
    }
    for name, value in optional.items():
        if value is not None:
            tensors[name] = value.detach().float().contiguous().cpu()
    if represented is not None:
        tensors["represented"] = represented.detach().to(torch.uint8).contiguous().cpu()
    metadata = {"format": FORMAT, "version": VERSION, "info": json.dumps(info or {})}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


@dataclass
class GroundTruth:
    """What scoring an SAE needs to know about its data: the true directions, which of them the
    model represents, their names, and batches of (activations, true codes or None). Built from
    an activation file (``file_ground_truth``) or a live toy model (``toymodels.export``)."""

    source: str
    """The file or folder the data comes from, as messages name it."""
    directions: Tensor
    """[n_features, d] true feature directions, one per row."""
    represented: Tensor | None
    names: list[str] | None
    batches: Callable[[], Iterator[tuple[Tensor, Tensor | None]]]
    """A fresh pass over the scoring rows at each call."""


def file_ground_truth(file: ActivationFile, start: int = 0, batch_size: int = 8192) -> GroundTruth:
    """The ground truth of an activation file, scored on its rows from ``start`` on."""
    path = file.path
    if not file.has_ground_truth:
        raise UsageError(f"{path}: no 'ground_truth' tensor to score against")

    def batches() -> Iterator[tuple[Tensor, Tensor | None]]:
        for i in range(start, file.n_rows, batch_size):
            rows = slice(i, min(i + batch_size, file.n_rows))
            yield file.rows(rows), file.feature_acts(rows)

    return GroundTruth(
        str(path),
        file.tensor("ground_truth"),
        file.tensor("represented"),
        file.info.get("feature_names"),
        batches,
    )


class ActivationFile:
    """A validated, memory-mapped activation file. Any defect raises a one-line UsageError."""

    def __init__(self, path: str | Path, check_finite: bool = True) -> None:
        self.path = Path(path)
        header, data_start, file_size = _read_header(self.path)
        raw_meta = header.pop("__metadata__", {}) or {}
        self._arrays: dict[str, np.ndarray] = {}
        self._dtype_names: dict[str, str] = {}
        for name, entry in header.items():
            array, dtype_name = _map_tensor(self.path, name, entry, data_start, file_size)
            self._arrays[name], self._dtype_names[name] = array, dtype_name
        self.info: dict[str, Any] = _parse_info(raw_meta, self.path)
        self._validate(check_finite)

    # -- shapes -------------------------------------------------------------------------
    @property
    def n_rows(self) -> int:
        return self._arrays["activations"].shape[0]

    @property
    def d(self) -> int:
        return self._arrays["activations"].shape[1]

    @property
    def has_ground_truth(self) -> bool:
        return "ground_truth" in self._arrays

    @property
    def has_feature_acts(self) -> bool:
        return "feature_acts" in self._arrays

    # -- data ---------------------------------------------------------------------------
    def rows(self, index: np.ndarray | slice) -> Tensor:
        """Activations at ``index`` (sorted indices read the map in order) as a float32 tensor."""
        return torch.from_numpy(np.array(self._arrays["activations"][index], copy=True))

    def feature_acts(self, index: np.ndarray | slice) -> Tensor | None:
        if not self.has_feature_acts:
            return None
        return torch.from_numpy(np.array(self._arrays["feature_acts"][index], copy=True))

    def tensor(self, name: str) -> Tensor | None:
        """A small whole tensor (ground_truth, feature_probability, represented) or None."""
        if name not in self._arrays:
            return None
        t = torch.from_numpy(np.array(self._arrays[name]))
        return t.bool() if name == "represented" else t

    # -- checks -------------------------------------------------------------------------
    def _validate(self, check_finite: bool) -> None:
        p, arrays = self.path, self._arrays
        if "activations" not in arrays:
            raise UsageError(f"{p}: no 'activations' tensor (found: {', '.join(arrays) or 'none'})")
        for name, dtype in _EXPECTED.items():
            if name in arrays and self._dtype_names[name] != dtype:
                raise UsageError(f"{p}: '{name}' must be {dtype}, got {self._dtype_names[name]}")
        acts = arrays["activations"]
        if acts.ndim != 2:
            raise UsageError(f"{p}: 'activations' must be 2-D [N, d], got shape {list(acts.shape)}")
        if acts.shape[0] == 0 or acts.shape[1] == 0:
            raise UsageError(f"{p}: 'activations' has no rows (shape {list(acts.shape)})")
        gt = arrays.get("ground_truth")
        if gt is not None and (gt.ndim != 2 or gt.shape[1] != acts.shape[1]):
            raise UsageError(
                f"{p}: 'ground_truth' must be [n_features, {acts.shape[1]}] to match the "
                f"activations, got {list(gt.shape)}"
            )
        n_features = gt.shape[0] if gt is not None else None
        for name in ("feature_probability", "represented"):
            arr = arrays.get(name)
            if arr is not None and (arr.ndim != 1 or (n_features and arr.shape[0] != n_features)):
                raise UsageError(f"{p}: '{name}' must be [{n_features}], got {list(arr.shape)}")
        fa = arrays.get("feature_acts")
        if fa is not None and (
            fa.ndim != 2
            or fa.shape[0] != acts.shape[0]
            or (n_features and fa.shape[1] != n_features)
        ):
            raise UsageError(
                f"{p}: 'feature_acts' must be [{acts.shape[0]}, {n_features}], got {list(fa.shape)}"
            )
        if check_finite:
            for name in ("activations", "ground_truth", "feature_acts"):
                if name in arrays and not _all_finite(arrays[name]):
                    raise UsageError(f"{p}: '{name}' contains NaN or Inf values")


def _read_header(path: Path) -> tuple[dict[str, Any], int, int]:
    try:
        with open(path, "rb") as f:
            file_size = f.seek(0, 2)
            f.seek(0)
            prefix = f.read(8)
            if len(prefix) < 8:
                raise UsageError(f"{path}: not a safetensors file (too short)")
            (n,) = struct.unpack("<Q", prefix)
            if n > min(file_size - 8, 100_000_000):
                raise UsageError(f"{path}: not a safetensors file (bad header length)")
            header = json.loads(f.read(n))
    except FileNotFoundError:
        raise UsageError(f"activation file not found: {path}") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a folder, not an activation file") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UsageError(f"{path}: not a safetensors file (unreadable header)") from None
    except OSError as e:
        raise UsageError(f"cannot read activation file {path}: {e.strerror}") from None
    if not isinstance(header, dict):
        raise UsageError(f"{path}: not a safetensors file (header is not a mapping)")
    return header, 8 + n, file_size


def _map_tensor(
    path: Path, name: str, entry: Any, data_start: int, file_size: int
) -> tuple[np.ndarray, str]:
    try:
        dtype_name, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
    except (TypeError, KeyError, ValueError):
        raise UsageError(f"{path}: corrupt header entry for '{name}'") from None
    dtype = _DTYPES.get(dtype_name)
    if dtype is None:
        raise UsageError(f"{path}: '{name}' has unsupported dtype {dtype_name}")
    count = int(np.prod(shape)) if shape else 1
    if end - begin != count * np.dtype(dtype).itemsize or begin < 0:
        raise UsageError(f"{path}: corrupt header: '{name}' size does not match its shape")
    if data_start + end > file_size:
        raise UsageError(f"{path}: file is truncated ('{name}' runs past the end)")
    if count == 0:
        array = np.zeros(shape, dtype=dtype)
    else:
        array = np.memmap(
            path, dtype=dtype, mode="r", offset=data_start + begin, shape=tuple(shape)
        )
    return array, dtype_name


def _parse_info(meta: dict[str, str], path: Path) -> dict[str, Any]:
    raw = meta.get("info")
    if raw is None:
        return {}
    try:
        info = json.loads(raw)
    except json.JSONDecodeError:
        raise UsageError(f"{path}: metadata 'info' is not valid JSON") from None
    return info if isinstance(info, dict) else {}


def _all_finite(array: np.ndarray, chunk_rows: int = 65_536) -> bool:
    if array.ndim == 0 or array.shape[0] == 0:
        return True
    return all(
        np.isfinite(array[i : i + chunk_rows]).all() for i in range(0, array.shape[0], chunk_rows)
    )
