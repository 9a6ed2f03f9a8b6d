"""Reading an offline wandb run back (wandb 0.31 has no public reader for ``run-*.wandb``).

The file is a 7-byte header (':W&B', magic, version), then LevelDB-style chunks (crc32c,
length, type: 1 full, 2 first, 3 middle, 4 last) in 32 KiB blocks, each a protobuf Record.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024


def raw_records(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    pos, pending, out = 7, b"", []
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            out.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            out.append(pending + chunk)
            pending = b""
    return out


def records(log: Path, timeout_s: float = 600.0) -> list[Any]:
    """The log's records once its final ``exit`` record is on disk: ``run.finish()`` can return
    before wandb-core has flushed its buffered writer, so wait for the file to be complete (and
    read again if a record was caught half-written). The wait ends on that event; the timeout
    only stops a test that would otherwise hang, so it is generous for a busy machine."""
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2 as pb

    deadline = time.monotonic() + timeout_s
    while True:
        parsed = []
        try:
            for raw in raw_records(log):
                record = pb.Record()
                record.ParseFromString(raw)
                parsed.append(record)
        except DecodeError:  # caught the writer mid-record: read again
            parsed = []
        kinds = [r.WhichOneof("record_type") for r in parsed]
        if "exit" in kinds or time.monotonic() > deadline:
            assert "exit" in kinds, f"{log} never got its exit record: {kinds}"
            return parsed
        time.sleep(0.2)


def history_and_config(run_folder: Path) -> tuple[list[dict[str, Any]], dict[str, Any], str]:
    """(history rows, config, project) of an offline run folder ``offline-run-*``."""
    (log,) = run_folder.glob("run-*.wandb")
    history, config, project = [], {}, ""
    for record in records(log):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append(
                {
                    (i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                    for i in record.history.item
                }
            )
        elif kind in ("run", "config"):
            if kind == "run":
                project = record.run.project
            updates = record.run.config.update if kind == "run" else record.config.update
            for item in updates:
                config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return history, config, project


def run_identity(run_folder: Path) -> dict[str, str]:
    """The ``id``, ``group`` and ``job_type`` an offline run folder was started with, and
    whether any of its run records asked to resume."""
    (log,) = run_folder.glob("run-*.wandb")
    runs = [r.run for r in records(log) if r.WhichOneof("record_type") == "run"]
    first = runs[0]
    return {
        "id": first.run_id,
        "group": first.run_group,
        "job_type": first.job_type,
        "runs": str(len(runs)),
    }


def artifacts(run_folder: Path) -> list[dict[str, Any]]:
    """The artifacts an offline run logged: name, type, metadata and the paths in each."""
    (log,) = run_folder.glob("run-*.wandb")
    out = []
    for record in records(log):
        if record.WhichOneof("record_type") == "artifact":
            a = record.artifact
            out.append(
                {
                    "name": a.name,
                    "type": a.type,
                    "metadata": json.loads(a.metadata or "{}"),
                    "paths": sorted(e.path for e in a.manifest.contents),
                    "refs": sorted(e.ref for e in a.manifest.contents if e.ref),
                }
            )
    return out
