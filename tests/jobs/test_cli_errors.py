"""Wrong arguments of train, launch, sample, eval, export, search and stats are told in one clear line, before the
seconds of importing torch, DeepSpeed and diffusers (each case runs `main` in a fresh process to see what it
imported)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rdtf.jobs.cli import main

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "deepspeed", "diffusers")
sys.path.insert(0, str(REPO / "tests" / "trainer"))
from dataset_factory import make_dataset  # noqa: E402


def run_fresh(args: list[str]) -> tuple[int, list[str], str]:
    """`main(args)` in a new process: its exit code, which of HEAVY it imported, and its stderr."""
    code = (
        "import sys\nfrom rdtf.jobs.cli import main\n"
        "try:\n    code = main(sys.argv[1:])\nexcept SystemExit as exit:  # argparse's usage errors\n"
        "    code = exit.code\n"
        f"print(code, *[m for m in {HEAVY!r} if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO, check=True)
    exit_code, *imported = result.stdout.split()
    return int(exit_code), imported, result.stderr


@pytest.fixture
def not_a_gif(tmp_path: Path) -> Path:
    path = tmp_path / "some.yaml"
    path.write_text("run:\n  seed: 1\n")
    return path


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """Just enough of a run folder for the checks made before the trainer is imported: a config and one checkpoint."""
    run = tmp_path / "run"
    (run / "checkpoints" / "step-00000002").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    return run


SAMPLE = ["sample", "--checkpoint", "RUN", "--out", "x.gif"]


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--task", "t2v"], "--task t2v needs --text"),
        (["--task", "i2v"], "--task i2v needs --image"),
        (["--task", "t2v", "--text", "a cat", "--steps", "-3"], "--steps must be at least 1"),
        (["--task", "t2v", "--text", "a cat", "--text-scale", "-1"], "--text-scale must be at least 0"),
        (["--task", "interpolate", "--text", "a cat", "--gif", "NOT_A_GIF"], "NOT_A_GIF is not an image"),
        (["--task", "predict-post", "--gif", "/nonexistent.gif"], "--gif /nonexistent.gif: No such file"),
        (["--task", "t2v", "--text", "a cat"], "RUN is not an rdtf run folder: config.json is missing"),
    ],
)
def test_sample_refusals_come_before_torch(flags: list[str], says: str, not_a_gif: Path) -> None:
    flags = [str(not_a_gif) if flag == "NOT_A_GIF" else flag for flag in flags]
    code, imported, err = run_fresh(SAMPLE + flags)
    assert (code, imported) == (2, [])
    assert says.replace("NOT_A_GIF", str(not_a_gif)) in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--clips", "1"], "--clips must be at least 2"),
        (["--keyframes", "3"], "--keyframes must be at least 5"),
        (["--keyframes", "9"], "--keyframes must be at most 8"),
        (["--out", "A_FILE"], "is a file: give a folder"),
        ([], "RUN is not an rdtf run folder: config.json is missing"),
        (["--checkpoint", "A_RUN"], "DATA is not an rdtf dataset"),
    ],
)
def test_eval_refusals_come_before_torch(flags: list[str], says: str, tmp_path: Path, run_dir: Path) -> None:
    report = tmp_path / "report.json"
    report.write_text("{}")
    flags = [{"A_FILE": str(report), "A_RUN": str(run_dir)}.get(flag, flag) for flag in flags]
    base = ["eval", "--checkpoint", "RUN", "--data", "DATA", "--i3d-weights", "random", "--out", str(tmp_path / "r")]
    code, imported, err = run_fresh(base + flags)
    assert (code, imported) == (2, [])
    assert says in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("setting", "says"),
    [
        ("optim.lr=-1", "config key 'optim.lr': must be positive"),
        ("model.temporal_layer=lstm", "config key 'model.temporal_layer': 'lstm' is not one of 'sti', 'conv3d'"),
        ("model.block_out_channels=64", "config key 'model.block_out_channels': must be a non-empty list"),
        ("model.norm_num_groups=5", "config key 'model.norm_num_groups': 5 must divide every entry"),
        ("model.channels=8", "config key 'model.channels': is not a DFGN setting; they are in_channels, "),
    ],
)
@pytest.mark.parametrize("command", ["train", "launch"])
def test_train_and_launch_refuse_a_wrong_setting_before_torch(command: str, setting: str, says: str, tmp_path: Path):
    """The whole config, model settings included, is checked torch-free (trainer/model_settings.py): 1 s, not 11."""
    data = make_dataset(str(tmp_path / "ds"), files=1, rows_per_file=2)
    run = tmp_path / "run"
    args = ["--config", "tiny", "--data", data, "--out", str(run), "--set", setting]
    code, imported, err = run_fresh(["train", *args] if command == "train" else ["launch", "train", *args])
    assert (code, imported) == (2, [])
    assert says in err and "Traceback" not in err
    assert not run.exists()


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["MISSING", "--out", "NEW"], "is not an rdtf run folder: config.json is missing"),
        (["RUN", "--out", "A_FILE"], "is a file, not a folder"),
        (["RUN", "--out", "NEW", "--step", "999"], "no checkpoint step-00000999; it keeps step-00000002"),
        (["RUN", "--out", "NEW", "--step", "banana"], "argument --step: 'banana' is not a step"),
    ],
)
def test_export_refusals_come_before_diffusers(flags: list[str], says: str, run_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("mine")
    names = {"MISSING": tmp_path / "nope", "RUN": run_dir, "NEW": tmp_path / "pipeline", "A_FILE": tmp_path / "file"}
    code, imported, err = run_fresh(["export", *(str(names.get(flag, flag)) for flag in flags)])
    assert (code, imported) == (2, [])
    assert says in err and "Traceback" not in err
    assert not (tmp_path / "pipeline").exists()


def test_search_for_a_missing_example_comes_before_torch(tmp_path: Path) -> None:
    code, imported, err = run_fresh(["search", str(tmp_path), "--image", "/nonexistent.gif"])
    assert (code, imported) == (2, [])
    assert "--image /nonexistent.gif: no such file" in err


def test_stats_checks_the_page_folder_before_printing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", str(tmp_path), "--html", str(tmp_path / "nope" / "x.html")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and f"the folder {tmp_path / 'nope'} does not exist" in captured.err
    assert main(["stats", str(tmp_path), "--html", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("command", "says"),
    [
        ("sample", "docs/train.md"),
        ("eval", "docs/evaluate.md"),
        ("export", "docs/export.md"),
        ("query", "docs/query.md"),
        ("search", "docs/query.md"),
        ("stats", "docs/query.md"),
    ],
)
def test_help_names_the_docs_page(command: str, says: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    assert says in out and (REPO / says).is_file()


def test_eval_help_shows_the_defaults(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # argparse wraps at hyphens on a narrow terminal
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "it2v,interpolate,predict-post" in out and "file order; 64" in out and "5..8 (8)" in out
