"""SAELens interop without SAELens installed: every ``sae_<k>/cfg.json`` carries the fields
SAELens 6.x's standard-SAE config needs (so ``SAE.load_from_disk`` loads it as it is), and
``sae eval`` scores an SAE folder in SAELens's layout that we did not train."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_runs import sae_cli
from safetensors.torch import save_file
from synthetic import write_planted_file

from sae.io import load_sae

# What sae-lens 6.54 (sae_lens.StandardSAEConfig, SAE.load_from_disk) reads from cfg.json: the
# config dataclass's fields (d_in, d_sae, dtype, device, apply_b_dec_to_input,
# normalize_activations, reshape_activations, metadata), the "architecture" that picks the
# config class, and metadata.sae_lens_version (without one, or below 6.0, SAELens treats the
# file as a legacy config and converts it). A missing "dtype" was the KeyError users met.
SAELENS_REQUIRED = {
    "architecture": "standard",
    "d_in": int,
    "d_sae": int,
    "dtype": "float32",
    "device": str,
    "apply_b_dec_to_input": True,
    "normalize_activations": "none",
    "reshape_activations": "none",
    "metadata": dict,
}
# A cfg.json exactly as sae-lens 6.54.12 writes it (StandardSAE(StandardSAEConfig(d_in=8,
# d_sae=16)).save_model(folder)).
SAELENS_CFG = {
    "d_in": 8,
    "d_sae": 16,
    "dtype": "float32",
    "device": "cpu",
    "apply_b_dec_to_input": True,
    "normalize_activations": "none",
    "reshape_activations": "none",
    "metadata": {"sae_lens_version": "6.54.12", "sae_lens_training_version": "6.54.12"},
    "architecture": "standard",
}


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor]:
    path = tmp_path_factory.mktemp("acts") / "acts.safetensors"
    p = write_planted_file(path, n_features=16, d=8, n_rows=4096, p=0.1, seed=0)
    return path, p.features


def test_saved_cfg_has_every_field_saelens_needs(
    planted: tuple[Path, torch.Tensor], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    acts, _ = planted
    out = tmp_path / "run"
    code, _, err = sae_cli(
        [
            "train", "--activations", acts, "--out", out,
            "--set", "sae.d_sae=24", "--set", "sweep.l1_coefficient=[0.1, 0.3]",
            "--set", "train.steps=20", "--set", "train.batch_size=64",
            "--set", "runtime.progress_bar=false", "--set", "wandb.enabled=false",
        ],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    for k in (0, 1):
        cfg = json.loads((out / f"sae_{k}" / "cfg.json").read_text())
        for key, want in SAELENS_REQUIRED.items():
            assert key in cfg, key
            if isinstance(want, type):
                assert isinstance(cfg[key], want), (key, cfg[key])
            else:
                assert cfg[key] == want, (key, cfg[key])
        assert (cfg["d_in"], cfg["d_sae"]) == (8, 24)
        major = int(cfg["metadata"]["sae_lens_version"].split(".")[0])
        assert major >= 6  # read as a 6.x config, not converted as a legacy one
        # our own fields stay
        assert cfg["l1_coefficient"] == [0.1, 0.3][k] and cfg["instance"] == k
        assert load_sae(out / f"sae_{k}").d_sae == 24


def _saelens_folder(folder: Path, features: torch.Tensor, **cfg_changes) -> None:
    """An SAE saved the way SAELens saves one, whose decoder rows are the planted features (a
    perfect dictionary): float64 weights, SAELens's own cfg.json, nothing else."""
    folder.mkdir()
    n, d = features.shape
    weights = {
        "W_enc": features.T.contiguous().double(),
        "W_dec": features.contiguous().double(),
        "b_enc": torch.zeros(n, dtype=torch.float64),
        "b_dec": torch.zeros(d, dtype=torch.float64),
    }
    save_file(weights, str(folder / "sae_weights.safetensors"))
    cfg = {**SAELENS_CFG, "d_in": d, "d_sae": n, "dtype": "float64", **cfg_changes}
    (folder / "cfg.json").write_text(json.dumps(cfg))


def test_eval_scores_an_saelens_folder_against_an_activation_file(
    planted: tuple[Path, torch.Tensor], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    acts, features = planted
    folder = tmp_path / "from_elsewhere"
    _saelens_folder(folder, features)

    code, out, err = sae_cli(["eval", folder, "--activations", acts, "--json"], capsys)
    assert code == 0, err
    scores = json.loads(out)["from_elsewhere"]
    assert scores["all/mcc"] == pytest.approx(1.0, abs=1e-6)
    assert scores["all/recovered_0.99"] == 1.0
    assert scores["sae_l0"] > 0 and scores["dead_latents"] == 0
    stats = json.loads((folder / "eval_stats.json").read_text())
    assert stats["scalars"] == scores

    code, out, err = sae_cli(["eval", folder, "--activations", acts], capsys)
    assert code == 0, err
    header, row = out.splitlines()
    assert header.split()[:2] == ["sae", "l1"] and row.split()[:2] == ["from_elsewhere", "-"]


def test_eval_of_an_sae_folder_needs_an_activation_file(
    planted: tuple[Path, torch.Tensor], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "sae"
    _saelens_folder(folder, planted[1])
    code, _, err = sae_cli(["eval", folder], capsys)
    assert code == 2
    (line,) = err.splitlines()
    assert line.startswith("error: ") and str(folder) in line and "--activations" in line


def test_saelens_variants_load_as_saelens_computes_them(
    planted: tuple[Path, torch.Tensor], tmp_path: Path
) -> None:
    """apply_b_dec_to_input=false: SAELens encodes ReLU(x W_enc + b_enc); other architectures
    and input normalisation are refused in one line."""
    features = planted[1]
    folder = tmp_path / "no_b_dec_in"
    _saelens_folder(folder, features, apply_b_dec_to_input=False)
    g = torch.Generator().manual_seed(1)
    b_dec, b_enc = torch.randn(8, generator=g), torch.randn(16, generator=g) * 0.1
    save_file(
        {
            "W_enc": features.T.contiguous(),
            "W_dec": features.contiguous(),
            "b_enc": b_enc,
            "b_dec": b_dec,
        },
        str(folder / "sae_weights.safetensors"),
    )
    x = torch.randn(32, 8, generator=g)
    sae = load_sae(folder)
    codes = torch.relu(x @ features.T + b_enc)
    torch.testing.assert_close(sae.encode(x), codes, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae.decode(codes), codes @ features + b_dec, atol=1e-5, rtol=1e-5)

    from sae.run.errors import UsageError

    for change in ({"architecture": "jumprelu"}, {"normalize_activations": "layer_norm"}):
        other = tmp_path / next(iter(change.values()))
        _saelens_folder(other, features, **change)
        with pytest.raises(UsageError, match="cfg.json"):
            load_sae(other)
