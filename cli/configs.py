"""``sae configs``: the configs shipped in ``configs/``, each with the first line of its comment."""

from __future__ import annotations

from pathlib import Path

import click

from sae.run.errors import UsageError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def shipped_configs(root: Path = CONFIGS) -> list[tuple[str, str]]:
    """(path relative to the repository, first comment line) of every ``configs/**/*.yaml``."""
    rows = []
    for path in sorted(root.rglob("*.yaml")):
        first = ""
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("#"):
                first = line.lstrip("#").strip()
                break
            if line.strip():
                break
        rows.append((str(path.relative_to(root.parent)), first))
    return rows


@click.command("configs")
def configs() -> None:
    """List the shipped configs (configs/**/*.yaml) with the first line of their comment."""
    if not CONFIGS.is_dir():
        raise UsageError(f"no configs folder at {CONFIGS} (an installed copy ships none)")
    rows = shipped_configs()
    width = max((len(name) for name, _ in rows), default=0)
    for name, first in rows:
        click.echo(f"{name:<{width}}  {first}".rstrip())
