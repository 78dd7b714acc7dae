"""`rwkv-cpp --dragon`: on a given model, and on the synthetic default with nothing installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from rwkv_cli.app.bench import DRAGON_PROMPT, SYNTHETIC_SHAPE, synthetic_model_path

PERF_KEYS = (
    "promptTime", "completionTime", "totalTime", "timePerPrompt", "timePerCompletion",
    "timePerFullPrompt", "promptPerSecond", "completionPerSecond", "fullPromptPerSecond",
)
USAGE_KEYS = ("promptTokens", "completionTokens", "totalTokens", "promptTokensCached")
REPORT_KEYS = ("model", "threads", "engine", "synthetic", "arch", "dataType", "warmupTime")


def run_cli(home, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, RWKV_HOME=str(home), NO_COLOR="1")
    return subprocess.run(
        [sys.executable, "-m", "rwkv_cli", *args], check=False, env=env, capture_output=True,
        text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )


def check_report(line: str, size: int) -> dict:
    report = json.loads(line)
    for key in PERF_KEYS + USAGE_KEYS + REPORT_KEYS:
        assert key in report, key
    assert 0 < report["completionTokens"] <= size
    assert report["totalTokens"] == report["promptTokens"] + report["completionTokens"]
    assert report["completionPerSecond"] > 0 and report["totalTime"] > 0
    return report


def test_dragon_json_on_a_given_model_prints_one_json_line(tmp_path, byte_v4):
    result = run_cli(tmp_path, "--dragon", "--size", "20", "--json", "--modelPath", str(byte_v4))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    report = check_report(lines[0], 20)
    assert report["synthetic"] is False and report["arch"] == "4"
    # Byte vocabulary: one token per byte of the dragon prompt.
    assert report["promptTokens"] == len(DRAGON_PROMPT.encode())
    assert report["threads"] >= 1 and report["engine"]


def test_dragon_streams_the_text_before_the_json_line(tmp_path, byte_v4):
    result = run_cli(tmp_path, "bench", "-n", "8", "--model-path", str(byte_v4), "--threads", "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(DRAGON_PROMPT)
    report = check_report(result.stdout.strip().splitlines()[-1], 8)
    assert report["threads"] == 1


def test_dragon_on_a_file_that_is_not_a_model_is_one_clear_line(tmp_path):
    bogus = tmp_path / "bogus.bin"
    bogus.write_bytes(b"not a model at all" * 10)
    result = run_cli(tmp_path, "--dragon", "--modelPath", str(bogus))
    assert result.returncode == 1
    assert "not an rwkv.cpp model file" in result.stderr and "Traceback" not in result.stderr


def test_dragon_with_nothing_installed_runs_on_a_cached_synthetic_model(tmp_path, monkeypatch):
    """Generates the 0.1B-shape model once (about 300 MB, ~10 s) and benchmarks it twice."""
    home = tmp_path / "home"
    result = run_cli(home, "--dragon", "--size", "20", "--json")
    assert result.returncode == 0, result.stderr
    report = check_report(result.stdout.strip(), 20)
    assert report["synthetic"] is True
    assert report["arch"] == SYNTHETIC_SHAPE["arch"]
    monkeypatch.setenv("RWKV_HOME", str(home))
    cached = synthetic_model_path()
    assert cached.is_file()
    stamp = cached.stat().st_mtime_ns
    again = run_cli(home, "bench", "--size", "2", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["synthetic"] is True
    assert cached.stat().st_mtime_ns == stamp  # generated once, then reused
