"""The `rdtf` command line: help, version, and errors that say what was wrong before any work starts."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from rdtf.jobs.cli import main
from rdtf.jobs.corpus import make_corpus

REPO = Path(__file__).resolve().parents[2]


def test_help_and_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rdtf.jobs.cli", "--help"], capture_output=True, text=True, check=True
    )
    assert "preprocess" in result.stdout and "demo" in result.stdout
    result = subprocess.run(
        [sys.executable, "-m", "rdtf.jobs.cli", "--version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.startswith("rdtf ")
    result = subprocess.run(
        [sys.executable, "-m", "rdtf.jobs.cli", "preprocess", "--help"], capture_output=True, text=True, check=True
    )
    assert "--out" in result.stdout and "--address" in result.stdout


def test_the_command_line_starts_without_torch() -> None:
    """`rdtf preprocess`, `query`, `--help` and the rest need no trainer: importing torch cost every command a second
    and the preprocessing driver 450 MB."""
    code = "import sys, rdtf.jobs.cli; print([m for m in ('torch', 'deepspeed', 'diffusers') if m in sys.modules])"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


def test_train_refuses_a_wrong_dataset_before_importing_torch(tmp_path: Path) -> None:
    """A mistyped --data is told at once, not after the seconds of importing torch, DeepSpeed and diffusers."""
    code = (
        "import sys; from rdtf.jobs.cli import main; "
        f"code = main(['train', '--config', 'configs/tiny.yaml', '--data', {str(tmp_path / 'nope')!r}, "
        f"'--out', {str(tmp_path / 'run')!r}]); "
        "print(code, [m for m in ('torch', 'deepspeed', 'diffusers') if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert result.stdout == "2 []\n"
    assert "is not an rdtf dataset" in result.stderr
    assert not (tmp_path / "run").exists()


def test_an_address_nobody_listens_on_is_refused_at_once(tmp_path: Path) -> None:
    """`ray.init` would retry for minutes; the command says in seconds that nothing answers there."""
    with socket.socket() as probe:  # a free port, closed again: nothing listens on it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    make_corpus(tmp_path / "in", count=1)
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        command = ["preprocess", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--address", address]
        code = f"import sys; from rdtf.jobs.cli import main; sys.exit(main({command!r}))"
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and f"cannot reach a Ray cluster at {address}" in result.stderr
    assert not (tmp_path / "out" / "card.json").exists()


def test_bad_config_key_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("decode:\n  fsp: 4\n")
    assert main(["preprocess", str(tmp_path), "--out", str(tmp_path / "out"), "--config", str(config)]) == 2
    assert "decode.fsp" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_out_of_range_flag_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["preprocess", str(tmp_path), "--out", str(tmp_path / "out"), "--max-frames", "0"]) == 2
    assert "decode.max_frames" in capsys.readouterr().err


def test_missing_input_says_what_to_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["preprocess", str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_empty_folder_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["preprocess", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2
    assert "no inputs found" in capsys.readouterr().err


def test_changed_settings_on_an_existing_output_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rdtf.pipeline.card import make_card
    from rdtf.pipeline.config import PreprocessConfig
    from rdtf.schemas.config import to_dict
    from rdtf.schemas.layout import DatasetLayout

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.gif").write_bytes(b"GIF89a")
    DatasetLayout.at(str(tmp_path / "out")).write_card(make_card(to_dict(PreprocessConfig()), "complete", None, None))
    assert main(["preprocess", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--fps", "4"]) == 2
    assert "different 'decode' settings" in capsys.readouterr().err


def test_the_deepspeed_launchers_local_rank_flag_is_accepted() -> None:
    from rdtf.jobs.cli import build_parser

    args = build_parser().parse_args(["--local_rank=1", "train", "--config", "tiny", "--data", "d", "--out", "r"])
    assert args.command == "train" and args.local_rank == 1


def test_train_set_values_are_yaml_and_malformed_ones_are_named() -> None:
    from rdtf.jobs.train import parse_sets
    from rdtf.schemas.config import ConfigError

    assert parse_sets(["optim.lr=1.0e-4", "optim.ema_decay=null", "model.block_out_channels=[8, 16]"]) == {
        "optim.lr": 1e-4,
        "optim.ema_decay": None,
        "model.block_out_channels": [8, 16],
    }
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_sets(["optim.lr"])
    # YAML reads 1e-4 as text; a float setting still takes it
    from rdtf.schemas.config import load
    from rdtf.trainer.config import TrainConfig

    assert load(TrainConfig, None, {"model": {"sample_size": 32}} | parse_sets(["optim.lr=1e-4"])).optim.lr == 1e-4


@pytest.mark.slow
def test_preprocess_and_train_are_quiet_by_default(tmp_path: Path) -> None:
    """A normal run prints the summary, not the libraries' notices; -v shows them (fresh processes: the libraries'
    loggers are global)."""
    make_corpus(str(tmp_path / "in"), count=2)
    command = [sys.executable, "-m", "rdtf.jobs.cli", "preprocess", str(tmp_path / "in"), "--num-cpus", "1"]
    quiet = subprocess.run(command + ["--out", str(tmp_path / "a")], capture_output=True, text=True, check=True)
    assert "dataset:" in quiet.stdout
    assert "WARNING" not in quiet.stderr and "Token authentication" not in quiet.stderr, quiet.stderr
    verbose = subprocess.run(
        [command[0], *command[1:3], "-v", *command[3:], "--out", str(tmp_path / "b")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "already accounted for" in verbose.stderr  # rdtf's own log lines, and Ray's
    train = [command[0], *command[1:3], "train", "--config", "configs/tiny.yaml", "--data", str(tmp_path / "a")]
    # a wrong --data or model setting is refused before anything is written
    for bad in (["--data", str(tmp_path / "nowhere")], ["--set", "model.norm_num_groups=7"]):
        refused = subprocess.run([*train, *bad, "--out", str(tmp_path / "no")], capture_output=True, text=True)
        assert refused.returncode == 2 and "rdtf train: error:" in refused.stderr, refused.stderr
        assert not (tmp_path / "no").exists()
    train += ["--out", str(tmp_path / "run"), "--steps", "2", "--set", "run.checkpoint_every=2"]
    trained = subprocess.run(train, capture_output=True, text=True, check=True)
    assert "trained steps 0 -> 2" in trained.stdout
    # rdtf's own warning (random text weights) stays; DeepSpeed's and open_clip's notices do not
    assert "text.weights is 'random'" in trained.stderr
    for notice in ("[WARNING]", "No pretrained weights", "No CUDA runtime"):
        assert notice not in trained.stderr, trained.stderr
    sample = [command[0], *command[1:3], "sample", "--checkpoint", str(tmp_path / "run"), "--task", "t2v"]
    sample += ["--text", "a red circle", "--steps", "2"]
    sampled = subprocess.run(sample + ["--out", str(tmp_path / "s.gif")], capture_output=True, text=True, check=True)
    assert "accelerate" not in sampled.stderr, sampled.stderr  # diffusers' notice


def test_deepspeeds_ops_are_built_in_the_checkout_unless_the_user_says_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rdtf.jobs.cli import use_project_extension_dir

    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    use_project_extension_dir()
    assert os.environ["TORCH_EXTENSIONS_DIR"] == str(REPO / ".torch_extensions")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", "/somewhere/else")
    use_project_extension_dir()
    assert os.environ["TORCH_EXTENSIONS_DIR"] == "/somewhere/else"


@pytest.mark.parametrize(
    "flags", [["--num-gpus", "-1"], ["--num-gpus", "0"], ["--backend", "ray", "--cpus-per-worker", "0"],
              ["--backend", "ray", "--num-workers", "0"], ["--master-port", "70000"]],
)  # fmt: skip
def test_launch_refuses_counts_out_of_range(flags: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """`--num-gpus -1` used to start a whole training run with CUDA_VISIBLE_DEVICES=0 on a CPU-only machine."""
    with pytest.raises(SystemExit) as exit_info:
        main(["launch", "train", "--config", "tiny", "--data", "d", "--out", "r", *flags])
    assert exit_info.value.code == 2 and f"argument {flags[-2]}: must be" in capsys.readouterr().err


def test_presets_are_named_and_a_missing_config_is_told_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    from rdtf.jobs.cli import build_parser

    args = build_parser().parse_args(["train", "--config", "tiny", "--data", "d", "--out", "r"])
    assert Path(args.config).resolve() == (REPO / "configs" / "tiny.yaml").resolve()
    with pytest.raises(SystemExit):
        main(["launch", "train", "--config", "tiny.yml", "--data", "d", "--out", "r"])
    assert "'tiny.yml' is neither a file nor a preset (paper, small, tiny)" in capsys.readouterr().err


def test_path_mistakes_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each of these was a traceback, or (s3:/) a dataset written into a local folder named 's3:'."""
    make_corpus(tmp_path / "in", count=1)
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "notes.yaml").write_text("a: b: c\n")
    cases = [
        (["preprocess", str(tmp_path / "in"), "--out", "s3:/bucket/out"], "write s3:// with two slashes"),
        (["preprocess", str(tmp_path / "in"), "--out", str(tmp_path / "a_file")], "is a file: the output must be"),
        (["preprocess", str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--config", str(tmp_path / "notes.yaml")],
         "is not a YAML file of settings"),
    ]  # fmt: skip
    for argv, message in cases:
        assert main(argv) == 2 and message in capsys.readouterr().err, argv
    assert not (tmp_path / "s3:").exists()


def test_train_on_a_dataset_without_rows_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.gif").write_text("not a GIF")
    assert main(["preprocess", str(tmp_path / "in"), "--out", str(tmp_path / "ds")]) == 0
    assert "nothing usable: every input was rejected" in capsys.readouterr().out
    assert main(["train", "--config", "tiny", "--data", str(tmp_path / "ds"), "--out", str(tmp_path / "r")]) == 2
    assert "has no rows to train on" in capsys.readouterr().err


def test_verbose_goes_before_or_after_the_command() -> None:
    from rdtf.jobs.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["stats", "ds", "-v"]).verbose and parser.parse_args(["-v", "stats", "ds"]).verbose
    assert parser.parse_args(["jobs", "list", "--verbose"]).verbose and not parser.parse_args(["stats", "ds"]).verbose
