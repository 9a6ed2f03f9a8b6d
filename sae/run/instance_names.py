"""wandb names for the instances of a batched run: each instance is named by the sweep values
that tell it apart (``l1=0.3,seed=0``), not by its index. ``metrics.jsonl`` keeps the index
keys (``loss/instance_0``), which its readers use; only wandb sees the names."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

_INSTANCE_KEY = re.compile(r"^(.*)/instance_(\d+)$")


def instance_labels(values: Mapping[str, Sequence[Any]]) -> list[str]:
    """One label per instance from ``values`` (name -> one value per instance): the names whose
    values differ across instances, as ``name=value`` joined by commas. Instances the values
    cannot tell apart get ``instance=k`` added. A lone instance gets the empty label: its keys
    are the bare metric names (``loss``), the same in every run of a wandb sweep, and its values
    are in the run's config."""
    columns = {name: list(v) for name, v in values.items()}
    n = len(next(iter(columns.values()))) if columns else 0
    if n == 1:
        return [""]
    differ = [name for name, v in columns.items() if len(set(map(_fmt, v))) > 1]
    shown = differ or list(columns)
    labels = [",".join(f"{name}={_fmt(columns[name][k])}" for name in shown) for k in range(n)]
    if len(set(labels)) < n:
        labels = [f"{label},instance={k}".lstrip(",") for k, label in enumerate(labels)]
    return labels


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def name_instances(record: Mapping[str, Any], labels: Sequence[str] | None) -> dict[str, Any]:
    """``record`` with each ``<metric>/instance_<k>`` key renamed ``<metric>/<labels[k]>``
    (``<metric>`` for the empty label; unchanged without labels, or for an index past them)."""
    if not labels:
        return dict(record)
    out: dict[str, Any] = {}
    for key, value in record.items():
        match = _INSTANCE_KEY.match(key)
        if match and int(match[2]) < len(labels):
            label = labels[int(match[2])]
            key = f"{match[1]}/{label}" if label else match[1]
        out[key] = value
    return out
