"""Model files as wandb artifacts, when ``wandb.log_artifacts`` asks for them: each SAE folder,
the toy model, and the activation file's metadata (a reference to the file, never its rows)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def log_files(
    logger: Any,
    name: str,
    kind: str,
    paths: Sequence[Path],
    metadata: dict[str, Any] | None = None,
) -> None:
    """One artifact ``<run id>-<name>`` of type ``kind`` holding ``paths`` (files, or folders
    under their own name)."""
    import wandb

    run = logger.experiment
    artifact = wandb.Artifact(f"{run.id}-{name}", type=kind, metadata=metadata or {})
    for path in paths:
        if path.is_dir():
            artifact.add_dir(str(path), name=path.name)
        elif path.exists():
            artifact.add_file(str(path))
    run.log_artifact(artifact)


def log_activation_metadata(logger: Any, path: str | Path) -> None:
    """An artifact ``<run id>-activations`` (type ``dataset``): the activation file's safetensors
    metadata and tensor shapes, with a reference to the file (not uploaded, not hashed)."""
    import wandb
    from safetensors import safe_open

    path = Path(path).resolve()
    with safe_open(str(path), "np") as f:
        header = dict(f.metadata() or {})
        shapes = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    metadata = {"path": str(path), "size_bytes": path.stat().st_size, "tensors": shapes, **header}
    run = logger.experiment
    artifact = wandb.Artifact(f"{run.id}-activations", type="dataset", metadata=metadata)
    artifact.add_reference(path.as_uri(), name=path.name, checksum=False)
    run.log_artifact(artifact)
