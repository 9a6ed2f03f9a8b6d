"""The markdown report of a pipeline run: which SAE recovered the most ground-truth features."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sae.evaluate import format_scalar
from sae.run.files import write_text

RANK_KEYS = ("represented/recovered_0.99", "represented/mcc", "explained_variance")
MCC_TOLERANCE = 0.005
"""MCC values closer than this count as tied (a fifth-decimal difference says nothing)."""
RANK_RULE = (
    "Best = the most represented features recovered at cosine > 0.99; among those, MCC values "
    f"within {MCC_TOLERANCE:g} of the highest count as tied and the higher explained variance wins."
)
COLUMNS = [
    ("λ", "l1_coefficient"),
    ("recovered@0.99 (repr.)", "represented/recovered_0.99"),
    ("recovered@0.9 (repr.)", "represented/recovered_0.9"),
    ("MCC (repr.)", "represented/mcc"),
    ("MCC (all)", "all/mcc"),
    ("MMCS (all)", "all/mmcs"),
    ("explained var.", "explained_variance"),
    ("EV ceiling", "explained_variance_ceiling"),
    ("L0", "sae_l0"),
    ("dead", "dead_latents"),
    ("F1", "classification/f1_score"),
]


def rank_key(scalars: dict[str, Any]) -> tuple[float, ...]:
    return tuple(float(scalars.get(k) or 0.0) for k in RANK_KEYS)


def best_sae(results: dict[str, dict[str, Any]], mcc_tolerance: float = MCC_TOLERANCE) -> str:
    """The SAE that recovered the most represented features; among those, MCC values within
    ``mcc_tolerance`` of the highest are tied, and the tie goes to the higher explained variance
    (then the higher MCC, then the first listed)."""
    keys = {name: rank_key(r["scalars"]) for name, r in results.items()}
    top_recovered = max(k[0] for k in keys.values())
    finalists = [n for n, k in keys.items() if k[0] == top_recovered]
    top_mcc = max(keys[n][1] for n in finalists)
    tied = [n for n in finalists if keys[n][1] >= top_mcc - mcc_tolerance]
    return max(tied, key=lambda n: (keys[n][2], keys[n][1]))


def write_report(
    path: str | Path, title: str, intro: list[str], results: dict[str, dict[str, Any]]
) -> str:
    """``results``: SAE name -> {"scalars": ..., "cfg": ..., "plots": {name: path}}."""
    path = Path(path)
    best = best_sae(results)
    b = results[best]
    lines = [f"# {title}", "", *intro, ""]
    lines += [
        f"**Best: `{best}` (λ = {b['cfg']['l1_coefficient']:g})** recovered "
        f"{_pct(b['scalars'].get('represented/recovered_0.99'))} of the represented features at "
        f"cosine > 0.99 (MCC {_num(b['scalars'].get('represented/mcc'))}, explained variance "
        f"{_num(b['scalars'].get('explained_variance'))}).",
        "",
        "| SAE | " + " | ".join(c for c, _ in COLUMNS) + " |",
        "|---|" + "---|" * len(COLUMNS),
    ]
    for name, r in results.items():
        values = {"l1_coefficient": r["cfg"]["l1_coefficient"]} | r["scalars"]
        mark = " ⬅ best" if name == best else ""
        lines.append(
            f"| `{name}`{mark} | " + " | ".join(_num(values.get(k)) for _, k in COLUMNS) + " |"
        )
    lines += [
        "",
        "Metrics are computed on held-out activations the SAEs never trained on. "
        "'repr.' = over the features the toy model represents (alone, the feature moves the "
        "model's output by more than 0.5). 'EV ceiling' = the explained variance the true codes "
        "and directions (plus the best offset) reach on the same rows (below 1 where "
        "activations are not a linear mix of the true directions: relu_hidden, abs). " + RANK_RULE,
        "",
    ]
    for name, r in results.items():
        lines.append(f"### `{name}` (λ = {r['cfg']['l1_coefficient']:g})")
        lines += [f"![{k}]({Path(p).relative_to(path.parent)})" for k, p in r["plots"].items()]
        lines.append("")
    text = "\n".join(lines)
    write_text(path, text)
    return text


def _num(v: Any) -> str:
    return format_scalar(v, 3)


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * float(v):.0f}%"
