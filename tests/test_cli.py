"""The `rwkv-cpp` command line: flags, subcommands, help, and one-line errors."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import pytest
from helpers import tiny_model
from typer.testing import CliRunner

from rwkv_cli import __version__
from rwkv_cli.app.cli import _user_message, app

SUBCOMMANDS = ("chat", "complete", "bench", "models", "convert", "quantize", "setup", "perplexity")
ROOT_FLAGS = ("--setup", "--threads", "--gpu", "--modelPath", "--model-path", "--dragon",
              "--size", "--model", "--yes", "--json", "--debug", "--version", "--help")


def run_cli(home, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, RWKV_HOME=str(home), NO_COLOR="1", COLUMNS="200")
    env.pop("RWKV_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "rwkv_cli", *args], check=False, env=env, capture_output=True,
        text=True, timeout=60, input=stdin,
    )


@pytest.fixture
def runner(tmp_path, monkeypatch):
    monkeypatch.setenv("RWKV_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("NO_COLOR", "1")
    return CliRunner()


def test_help_lists_every_subcommand_and_the_original_flags(runner):
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in SUBCOMMANDS + ROOT_FLAGS:
        assert name in result.output, name


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_has_help(runner, name):
    result = runner.invoke(app, [name, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_version(runner):
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_help_does_not_import_the_engine_numpy_or_httpx(tmp_path):
    code = (
        "import sys\n"
        "sys.argv = ['rwkv-cpp', '--help']\n"
        "from rwkv_cli.app.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('numpy', 'httpx', 'rwkv_cli.core.model', 'rwkv_cli.engine')"
        " if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                            text=True, timeout=60)
    assert "HEAVY []" in result.stdout


def test_no_model_installed_says_to_run_setup_without_a_traceback(tmp_path):
    result = run_cli(tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "rwkv-cpp --setup" in lines[0]
    debug = run_cli(tmp_path, "--debug")
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_missing_model_file_is_named(tmp_path):
    result = run_cli(tmp_path, "--modelPath", str(tmp_path / "nope.bin"))
    assert result.returncode == 1
    assert "model file not found" in result.stderr and "nope.bin" in result.stderr


def test_old_quantized_format_is_refused_clearly(tmp_path):
    old = tmp_path / "old-q5_1.bin"
    old.write_bytes(struct.pack("<6i", 0x67676D66, 100, 256, 32, 2, 8) + b"\0" * 64)
    result = run_cli(tmp_path, "chat", "--model-path", str(old))
    assert result.returncode == 1
    assert "old block layout" in result.stderr and "Traceback" not in result.stderr


def test_missing_20b_tokenizer_is_one_line_with_the_setup_advice(tmp_path):
    from rwkv_cli.formats.synthetic import write_random_model

    model = write_random_model(tmp_path / "neox.bin", "4", 1, 32, 50277, data_type="FP16")
    result = run_cli(tmp_path / "home", "complete", "hi", "--model-path", str(model))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "20B_tokenizer.json" in lines[0]
    assert "rwkv-cpp --setup" in lines[0] and "Traceback" not in result.stderr


def test_gpu_flag_without_a_gpu_engine_is_a_clear_error(tmp_path):
    model = str(tiny_model("4v0", "FP32"))
    result = run_cli(tmp_path, "--gpu", "2", "--dragon", "--size", "2", "--modelPath", model)
    assert result.returncode == 1 and "gpu" in result.stderr.lower()
    assert len(result.stderr.strip().splitlines()) == 1
    bad = run_cli(tmp_path, "--gpu", "lots", "--dragon", "--modelPath", model)
    assert bad.returncode == 1 and "--gpu takes" in bad.stderr


def test_root_options_reach_subcommands(tmp_path):
    model = str(tiny_model("4v0", "FP32"))
    result = run_cli(tmp_path, "--threads", "1", "--modelPath", model, "bench", "-n", "2", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["threads"] == 1


def test_complete_prints_the_completion_or_the_json_result(tmp_path):
    model = str(tiny_model("4v0", "FP32"))
    result = run_cli(tmp_path, "complete", "-", "--model-path", model, "--max-tokens", "5",
                     "--json", "--seed", "3", stdin="The dragon")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["prompt"] == "The dragon"
    assert payload["usage"]["completionTokens"] <= 5
    assert set(payload["perf"]) >= {"promptTime", "completionPerSecond", "fullPromptPerSecond"}
    plain = run_cli(tmp_path, "complete", "The dragon", "--model-path", model, "--max-tokens",
                    "5", "--seed", "3")
    assert plain.returncode == 0
    assert plain.stdout.rstrip("\n") == payload["completion"].rstrip("\n")


def test_models_with_nothing_installed(tmp_path):
    result = run_cli(tmp_path, "models")
    assert result.returncode == 0 and "--setup" in result.stdout
    assert json.loads(run_cli(tmp_path, "models", "--json").stdout) == []


def test_convert_then_quantize(tmp_path):
    checkpoints = pytest.importorskip("checkpoints")
    pytest.importorskip("rwkv_cli.formats.convert")
    src = tmp_path / "tiny.pth"
    shape = checkpoints.Shape(n_layer=2, n_embed=64, n_vocab=256, head_size=16)
    checkpoints.write_pth(src, checkpoints.raw_checkpoint("4", shape), dtype="BF16")
    fp16, q8 = tmp_path / "tiny-FP16.bin", tmp_path / "tiny-Q8_0.bin"
    converted = run_cli(tmp_path, "convert", str(src), str(fp16))
    assert converted.returncode == 0, converted.stderr
    quantized = run_cli(tmp_path, "quantize", str(fp16), str(q8), "q8_0")
    assert quantized.returncode == 0, quantized.stderr
    assert 0 < q8.stat().st_size < fp16.stat().st_size
    from rwkv_cli.formats.modelfile import read_header

    assert read_header(q8).data_type_name == "Q8_0"
    bad = run_cli(tmp_path, "quantize", str(fp16), str(tmp_path / "x.bin"), "Q3_K")
    assert bad.returncode == 1 and "Q3_K" in bad.stderr
    assert not (tmp_path / "x.bin").exists()


def test_convert_reads_a_hugging_face_folder(tmp_path):
    import checkpoints

    raw = checkpoints.raw_checkpoint("7", checkpoints.Shape(n_layer=2, n_embed=64, head_size=16))
    folder = checkpoints.write_hf_checkpoint(tmp_path / "hf", raw, "7", shards=2)
    out = tmp_path / "hf-FP16.bin"
    converted = run_cli(tmp_path, "convert", str(folder), str(out))
    assert converted.returncode == 0, converted.stderr
    assert "RWKV v7" in converted.stdout
    assert out.stat().st_size > 0


def test_disk_full_and_other_os_errors_become_one_line():
    message = _user_message(OSError(28, "No space left on device", "/m/model.bin"))
    assert message is not None and message.startswith("disk full") and "/m/model.bin" in message
    assert _user_message(KeyError("x")) is None  # a programming error keeps its type
