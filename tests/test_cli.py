"""The command line's own surface: --version, ``sae configs``, --print-config, what a missing
--config means, --set errors and suggestions, --debug anywhere, a start-up that imports no
torch, and the warning that a short run will not resample. No command here trains anything."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
import yaml
from cli_runs import sae_cli

from cli.configs import CONFIGS, shipped_configs
from cli.main import cli, split_debug
from cli.pipeline import PipelineConfig
from sae.config import SAERunConfig
from sae.run.config_io import config_to_dict, load_config
from toymodels.config import ToyConfig
from toymodels.modular.config import ModularConfig

REPO = Path(__file__).resolve().parents[1]
# The run commands and the config each resolves.
RUN_COMMANDS = {
    ("toy", "train"): ToyConfig,
    ("toy", "phase-diagram"): ToyConfig,
    ("toy", "modular"): ModularConfig,
    ("train",): SAERunConfig,
    ("run",): PipelineConfig,
}
SHIPPED = {
    ("toy", "train"): "configs/toy/intro.yaml",
    ("toy", "phase-diagram"): "configs/toy/phase_2in1.yaml",
    ("toy", "modular"): "configs/toy/modular_addition.yaml",
    ("train",): "configs/sae/default.yaml",
    ("run",): "configs/quickstart.yaml",
}


def _command(words: tuple[str, ...]) -> click.Command:
    command: click.Command = cli
    for word in words:
        assert isinstance(command, click.Group)
        command = command.commands[word]
    return command


# -- --version, sae configs ------------------------------------------------------------------


def test_version_is_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    code, out, _ = sae_cli(["--version"], capsys)
    assert code == 0
    assert out.strip() == f"sae, version {version('sae-toolkit')}"


def test_configs_lists_every_shipped_config_with_its_first_comment_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = sae_cli(["configs"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    files = sorted(str(p.relative_to(REPO)) for p in CONFIGS.rglob("*.yaml"))
    assert len(files) >= 10 and [line.split()[0] for line in lines] == files
    for line, name in zip(lines, files, strict=True):
        first = next(x for x in (REPO / name).read_text().splitlines() if x.startswith("#")).lstrip(
            "# "
        )
        assert line.endswith(first.strip()), (line, first)
    assert "configs/quickstart.yaml" in out and "The README's demo" in out


def test_configs_takes_the_first_comment_line_only(tmp_path: Path) -> None:
    (tmp_path / "configs" / "toy").mkdir(parents=True)
    (tmp_path / "configs" / "toy" / "a.yaml").write_text("# First line.\n# Second.\nmodel: {}\n")
    (tmp_path / "configs" / "b.yaml").write_text("model: {}\n# late comment\n")
    rows = shipped_configs(tmp_path / "configs")
    assert rows == [("configs/b.yaml", ""), ("configs/toy/a.yaml", "First line.")]


# -- --print-config and a missing --config -----------------------------------------------------


@pytest.mark.parametrize("words", list(RUN_COMMANDS), ids=" ".join)
def test_print_config_prints_the_resolved_config_and_runs_nothing(
    words: tuple[str, ...], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cls, config = RUN_COMMANDS[words], REPO / SHIPPED[words]
    prefix = {"run": "sae."}.get(words[0], "")
    key = f"{prefix}train.steps" if cls is not ToyConfig else "train.steps"
    out_dir = tmp_path / "out"
    argv = [*words, "--config", config, "--set", f"{key}=7", "--out", out_dir, "--print-config"]
    code, out, err = sae_cli(argv, capsys)

    assert code == 0, err
    expected = config_to_dict(load_config(cls, config, [f"{key}=7"]))
    assert yaml.safe_load(out) == expected
    assert not out_dir.exists()  # nothing trained, no folder made
    assert "note:" not in err  # a --config was given


@pytest.mark.parametrize("words", list(RUN_COMMANDS), ids=" ".join)
def test_a_missing_config_says_which_defaults_it_uses(
    words: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = sae_cli([*words, "--print-config"], capsys)
    assert code == 0, err
    (line,) = err.splitlines()
    assert line.startswith("note: no --config") and RUN_COMMANDS[words].__name__ in line
    assert yaml.safe_load(out) == config_to_dict(RUN_COMMANDS[words]())


def test_print_config_of_a_resumed_run_is_its_saved_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = load_config(ToyConfig, REPO / "configs/toy/intro.yaml", ["train.steps=11"])
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config_to_dict(saved)))
    code, out, err = sae_cli(["toy", "train", "--resume", tmp_path, "--print-config"], capsys)
    assert code == 0, err
    assert yaml.safe_load(out) == config_to_dict(saved) and not err


# -- --set ---------------------------------------------------------------------------------------


def test_a_bad_set_names_the_set_not_the_file(capsys: pytest.CaptureFixture[str]) -> None:
    config = REPO / "configs/toy/intro.yaml"
    for override, names in {
        "model.n_featurs=3": ("'model.n_featurs'", "'model.n_features'"),
        "train.steps=many": ("'train.steps'", "many"),
        "train.steps=0": ("train.steps", "got 0"),
        "train.steps.x=1": ("'train.steps'",),
    }.items():
        argv = ["toy", "train", "--config", config, "--out", "never", "--set", override]
        code, _, err = sae_cli(argv, capsys)
        (line,) = err.splitlines()
        assert code == 2 and line.startswith(f"error: --set {override}: "), line
        assert str(config) not in line, line
        for name in names:
            assert name in line, (name, line)


def test_an_error_in_the_file_still_names_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("train: {steps: 0}\n")
    argv = [
        "toy",
        "train",
        "--config",
        config,
        "--out",
        tmp_path / "o",
        "--set",
        "model.n_hidden=3",
    ]
    code, _, err = sae_cli(argv, capsys)
    assert code == 2 and err.startswith(f"error: {config}: train.steps"), err


def test_did_you_mean_searches_every_section() -> None:
    from sae.run.errors import UsageError

    cases = [
        (SAERunConfig, "sae.l1_coefficient=0.1", "'sweep.l1_coefficient'"),
        (SAERunConfig, "train.l1_coefficient=0.1", "'sweep.l1_coefficient'"),
        (SAERunConfig, "sae.every=10", "'resample.every'"),
        (PipelineConfig, "sae.sae.l1_coefficient=0.1", "'sae.sweep.l1_coefficient'"),
        (PipelineConfig, "sae.sweep.sed=1", "'sae.sweep.seed'"),  # the same section first
        (ToyConfig, "model.lr=0.1", "'optim.lr'"),
    ]
    for cls, override, suggestion in cases:
        with pytest.raises(UsageError, match=re.escape(f"(did you mean {suggestion}?)")):
            load_config(cls, None, [override])
    with pytest.raises(UsageError, match=re.escape("(did you mean 'sweep.l1_coefficient'?)")):
        from sae.run.config_io import from_dict

        from_dict(SAERunConfig, {"sae": {"l1_coefficient": 1}}, "f.yaml", root=SAERunConfig)


def test_a_single_value_is_accepted_where_a_list_is_expected() -> None:
    config = load_config(SAERunConfig, None, ["sweep.seed=3", "sweep.l1_coefficient=0.5"])
    assert config.sweep.seed == [3] and config.sweep.l1_coefficient == [0.5]
    toy = load_config(ToyConfig, None, ["data.feature_probability=0.1"])
    assert toy.data.feature_probability == [0.1]
    assert load_config(ToyConfig, None, ["data.importance="]).data.importance is None
    assert load_config(SAERunConfig, None, ["sweep.seed=[1,2]"]).sweep.seed == [1, 2]


@pytest.mark.parametrize("words", list(RUN_COMMANDS), ids=" ".join)
def test_the_set_example_in_the_help_works(
    words: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = sae_cli([*words, "--help"], capsys)
    assert code == 0
    (example,) = re.findall(r"e\.g\.\s+--set\s+(\S+=\S+)", out)
    code, printed, err = sae_cli([*words, "--print-config", "--set", example], capsys)
    assert code == 0, err
    key, value = example.split("=")
    node = yaml.safe_load(printed)
    for part in key.split("."):
        node = node[part]
    assert node == yaml.safe_load(value)


def test_every_command_showing_a_set_example_is_checked() -> None:
    def walk(group: click.Group, words: tuple[str, ...]) -> list[tuple[str, ...]]:
        found = []
        for name, command in group.commands.items():
            if isinstance(command, click.Group):
                found += walk(command, (*words, name))
            elif any("--set" in p.opts for p in command.params):
                found.append((*words, name))
        return found

    assert sorted(walk(cli, ())) == sorted(RUN_COMMANDS)


# -- --debug anywhere ----------------------------------------------------------------------------


def test_debug_works_after_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "--debug", "--set", "sae.l1_coefficient=1", "--print-config"]
    code, _, err = sae_cli(argv, capsys)
    assert code == 2
    assert "Traceback (most recent call last)" in err
    assert err.splitlines()[-1].startswith("error: --set sae.l1_coefficient=1")
    assert split_debug(["train", "--debug", "--", "--debug"]) == (["train", "--", "--debug"], True)
    assert split_debug(["eval", "x"]) == (["eval", "x"], False)


# -- start-up ------------------------------------------------------------------------------------

HEAVY = ("torch", "lightning", "wandb")


@pytest.mark.parametrize(
    "argv", [["--help"], ["train", "--help"], ["train", "--bogus"], ["--version"], ["configs"]]
)
def test_help_and_argument_errors_import_no_torch(argv: list[str]) -> None:
    script = (
        "import json, sys\n"
        "from cli.main import cli, run_cli\n"
        f"code = run_cli(cli.main, {argv!r})\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "print(json.dumps([code, heavy]), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    code, heavy = json.loads(done.stderr.strip().splitlines()[-1])
    assert code in (0, 2), done.stderr
    assert heavy == [], heavy


# -- warnings ------------------------------------------------------------------------------------


def test_a_run_too_short_to_resample_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from synthetic import write_planted_file

    acts = tmp_path / "acts.safetensors"
    write_planted_file(acts, n_features=8, d=4, n_rows=512, p=0.2, seed=0)
    tiny = [
        *("--set", "sae.d_sae=8", "--set", "data.init_samples=64", "--set", "train.batch_size=32"),
        *("--set", "runtime.progress_bar=false", "--set", "wandb.enabled=false"),
        *("--set", "resample.method=anthropic", "--set", "resample.every=20"),
        *("--set", "resample.window=10", "--set", "resample.samples=64"),
    ]
    argv = ["train", "--activations", acts, *tiny]
    code, out, err = sae_cli([*argv, "--out", tmp_path / "a", "--set", "train.steps=20"], capsys)
    assert code == 0, err
    assert err.splitlines() == [
        "note: no --config given: using the built-in defaults of SAERunConfig plus any --set "
        "(see them with --print-config)",
        "warning: train.steps (20) <= resample.every (20): resampling "
        "(resample.method=anthropic) will not run",
    ]
    assert out.startswith("wrote 1 SAE(s)")
    code, _, err = sae_cli([*argv, "--out", tmp_path / "b", "--set", "train.steps=21"], capsys)
    assert code == 0 and "warning" not in err, err
    # Bad input stays one error line: the warning waits until the input has checked out.
    code, _, err = sae_cli(["train", *tiny, "--out", tmp_path / "d"], capsys)
    assert code == 2 and err.startswith("error: give exactly one activation source"), err
    assert len(err.splitlines()) == 1

    pipe = ["run", "--config", REPO / "configs/quickstart.yaml", "--print-config"]
    code, _, err = sae_cli([*pipe, "--set", "sae.train.steps=10"], capsys)
    assert code == 0 and err.startswith("warning: sae.train.steps (10) <= sae.resample.every")
    none = ["--set", "sae.resample.method=none", "--set", "sae.train.steps=10"]
    code, _, err = sae_cli([*pipe, *none], capsys)
    assert code == 0 and not err, err


def test_resampling_stopped_before_its_first_round_is_a_warning() -> None:
    config = load_config(
        SAERunConfig,
        None,
        ["resample.method=simple", "resample.every=100", "resample.window=10"]
        + ["resample.stop_after=50"],
    )
    (line,) = config.warnings()
    assert "resample.stop_after (50) < resample.every (100)" in line and "will not run" in line
