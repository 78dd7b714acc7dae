"""Python started in the project's root imports the source folder `rwkv_cli/`, which holds no
compiled engine unless it was built in place: the README's import must then fail with one
sentence that says what to do, not a traceback from deep inside."""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

from helpers import REPO

from rwkv_cli.formats.synthetic import write_random_model

README_IMPORT = "from rwkv_cli import RWKV; print('imported', RWKV.__module__)"


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=60,
        check=False,
    )


def built_in_place(package: Path) -> bool:
    engine = package / "engine"
    return any((engine / f"_rwkv_native{suffix}").is_file() for suffix in EXTENSION_SUFFIXES)


def assert_one_sentence_of_advice(result: subprocess.CompletedProcess, package: Path) -> None:
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("rwkv_cli.errors.EngineNotBuilt: rwkv_cli was imported from")
    assert str(package) in last
    assert "another folder" in last and "pip install -e ." in last
    # Raised by the import itself: the traceback is the import line and the raise, nothing deeper.
    frames = [line for line in result.stderr.splitlines() if line.startswith('  File "')]
    assert len(frames) <= 2, result.stderr


def test_the_readme_import_in_the_project_root():
    result = run_python(README_IMPORT, REPO)
    if built_in_place(REPO / "rwkv_cli"):  # `pip install -e .`: the example works as written
        assert result.returncode == 0 and "imported rwkv_cli.core.model" in result.stdout
    else:
        assert_one_sentence_of_advice(result, REPO / "rwkv_cli")


def test_a_source_folder_without_the_engine_says_what_to_do(tmp_path):
    # The state of every fresh clone, whatever this checkout holds.
    source = tmp_path / "rwkv_cli"
    shutil.copytree(
        REPO / "rwkv_cli", source,
        ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__", "rwkv.h"),
    )
    result = run_python(README_IMPORT, tmp_path)
    assert_one_sentence_of_advice(result, source)
    # The command says the same, in one line, when it comes to need the engine.
    model = write_random_model(tmp_path / "model.bin", "4", 1, 32, 256)
    command = subprocess.run(
        [sys.executable, "-m", "rwkv_cli", "complete", "hi", "--model-path", str(model)],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )
    assert command.returncode == 1
    lines = command.stderr.strip().splitlines()
    assert len(lines) == 1 and "no compiled engine" in lines[0], command.stderr
    for flag in ("--lib-path", "--system-info"):
        engine = subprocess.run(
            [sys.executable, "-m", "rwkv_cli.engine", flag], cwd=tmp_path, capture_output=True,
            text=True, timeout=60, check=False,
        )
        assert engine.returncode == 1 and engine.stdout == ""
        assert engine.stderr.count("\n") == 1 and "no compiled engine" in engine.stderr
