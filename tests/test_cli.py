"""The command line: one-line errors, non-zero exits, no tracebacks."""

import os
import subprocess
import sys

import pytest


def run_cli(*args, env_extra=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "dreamdistill.cli", *args], capture_output=True, text=True, env=env)


@pytest.mark.parametrize("args,message", [
    (["", "--teacher", "toy"], "empty prompt"),
    (["a red chair", "--teacher", "does/not-exist"], "teacher 'does/not-exist' not found"),
    (["sample", "a chair", "-n", "0"], "-n 0 is out of range"),
    (["sample", "a chair", "--out", "grid.txt"], "must end in .png"),
])
def test_bad_input_is_one_line(args, message, tmp_path):
    result = run_cli(*args, env_extra={"HF_HUB_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr


def test_output_under_a_file(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    result = run_cli("a red chair", "--out", str(tmp_path / "file.txt" / "runs"))
    assert result.returncode == 2 and "is a file, not a folder" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unwritable_output_folder(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.access(locked, os.W_OK):  # root ignores permissions
        pytest.skip("running as a user who can write anywhere")
    result = run_cli("a red chair", "--out", str(locked / "runs"))
    assert result.returncode == 2 and "not writable" in result.stderr


def test_help_lists_subcommands():
    result = run_cli("--help")
    assert result.returncode == 0 and "sample" in result.stdout and "train-teacher" in result.stdout
