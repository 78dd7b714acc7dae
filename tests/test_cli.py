"""The `rwkv-cpp` command line: flags, subcommands, help, and one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import checkpoints
import pexpect
import pytest
from typer.testing import CliRunner

from rwkv_cli import __version__
from rwkv_cli.app.cli import _user_message, app
from rwkv_cli.formats.synthetic import write_random_model

SUBCOMMANDS = ("chat", "complete", "serve", "bench", "models", "convert", "quantize", "setup",
               "perplexity")
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


def test_gpu_flag_without_a_gpu_engine_is_a_clear_error(tmp_path, byte_v4):
    model = str(byte_v4)
    result = run_cli(tmp_path, "--gpu", "2", "--dragon", "--size", "2", "--modelPath", model)
    assert result.returncode == 1 and "gpu" in result.stderr.lower()
    assert len(result.stderr.strip().splitlines()) == 1
    bad = run_cli(tmp_path, "--gpu", "lots", "--dragon", "--modelPath", model)
    assert bad.returncode == 1 and "--gpu takes" in bad.stderr


def test_root_options_reach_subcommands(tmp_path, byte_v4):
    model = str(byte_v4)
    result = run_cli(tmp_path, "--threads", "1", "--modelPath", model, "bench", "-n", "2", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["threads"] == 1


def test_complete_prints_the_completion_or_the_json_result(tmp_path, byte_v4):
    model = str(byte_v4)
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


def test_quantize_with_a_quantized_head(tmp_path):
    """--head TYPE quantizes the head too; the engine, complete's JSON and the dragon
    benchmark name its type; without --head the head stays FP16 (rwkv.cpp's output)."""
    from rwkv_cli.formats.modelfile import list_tensors

    fp16 = write_random_model(tmp_path / "m-FP16.bin", "7", 2, 64, 256, "FP16", head_size=16)
    plain, headed = tmp_path / "m-Q4_0.bin", tmp_path / "m-Q4_0-h.bin"
    assert run_cli(tmp_path, "quantize", str(fp16), str(plain), "Q4_0").returncode == 0
    done = run_cli(tmp_path, "quantize", str(fp16), str(headed), "Q4_0", "--head", "q8_0")
    assert done.returncode == 0, done.stderr
    heads = [{i.key: i.data_type_name for i in list_tensors(p)}["head.weight"] for p in (plain, headed)]
    assert heads == ["FP16", "Q8_0"]
    assert headed.stat().st_size < plain.stat().st_size
    bench = run_cli(tmp_path, "--dragon", "-n", "2", "--json", "--modelPath", str(headed))
    assert bench.returncode == 0, bench.stderr
    report = json.loads(bench.stdout.strip().splitlines()[-1])
    assert (report["dataType"], report["headType"]) == ("Q4_0", "Q8_0")
    bad = run_cli(tmp_path, "quantize", str(fp16), str(tmp_path / "x.bin"), "Q4_0", "--head", "Q6_K")
    assert "Q6_K" in one_line_error(bad) and "Quantizing" not in bad.stdout
    assert not list(tmp_path.glob("*x.bin*"))


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


# ---- issue 15: the command as a newcomer meets it ----


def copy_of(model, folder, name: str):
    """A copy of a session model (they are read-only) where a test needs a file of its own."""
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(model, folder / name))


def one_line_error(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr and "╭" not in result.stderr
    return lines[0]


def test_threads_above_the_cpus_are_capped_with_a_note(tmp_path, byte_v4):
    model = str(byte_v4)
    cpus = len(os.sched_getaffinity(0))
    result = run_cli(tmp_path, "bench", "-n", "2", "--json", "--threads", "999",
                     "--model-path", model)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["threads"] == cpus  # the count actually used
    assert "--threads 999" in result.stderr and f"using {cpus}" in result.stderr
    quiet = run_cli(tmp_path, "bench", "-n", "2", "--json", "--threads", "1", "--model-path", model)
    assert json.loads(quiet.stdout)["threads"] == 1 and quiet.stderr == ""


def test_concurrent_completions_share_one_context_that_uses_at_most_the_cpus(byte_v4):
    from rwkv_cli import RWKV
    from rwkv_cli.core.model import available_cpus

    model = byte_v4
    cpus = available_cpus()
    for concurrent in (1, 2, 3):
        for threads in (None, 999):
            rwkv = RWKV(model, threads=threads, concurrent=concurrent, tokenizer="bytes")
            # one context (its threads) serves every concurrent completion
            assert 1 <= rwkv.threads <= cpus
        assert RWKV(model, threads=1, concurrent=concurrent, tokenizer="bytes").threads == 1
    assert RWKV(model, threads=999, tokenizer="bytes").threads_requested == 999


def test_convert_and_quantize_refuse_an_existing_destination_unless_forced(tmp_path, byte_v4):
    src = byte_v4
    dest = tmp_path / "out-Q8_0.bin"
    dest.write_bytes(b"precious")
    refused = run_cli(tmp_path, "quantize", str(src), str(dest), "Q8_0")
    assert "exists" in one_line_error(refused) and "--force" in refused.stderr
    assert dest.read_bytes() == b"precious"
    forced = run_cli(tmp_path, "quantize", str(src), str(dest), "Q8_0", "--force")
    assert forced.returncode == 0, forced.stderr
    from rwkv_cli.formats.modelfile import read_header

    assert read_header(dest).data_type_name == "Q8_0"


def test_the_source_itself_is_refused_even_with_force(tmp_path, byte_v4):
    src = copy_of(byte_v4, tmp_path, "model-FP32.bin")
    before = src.read_bytes()
    link = tmp_path / "another-name.bin"
    os.link(src, link)  # the same file (device and inode) under another name
    for dest in (src, link):
        result = run_cli(tmp_path, "quantize", str(src), str(dest), "Q8_0", "--force")
        assert "source file itself" in one_line_error(result)
    assert src.read_bytes() == before

    pth = tmp_path / "tiny.pth"
    shape = checkpoints.Shape(n_layer=1, n_embed=32, n_vocab=256, head_size=16)
    checkpoints.write_pth(pth, checkpoints.raw_checkpoint("4", shape), dtype="BF16")
    pth_bytes = pth.read_bytes()
    result = run_cli(tmp_path, "convert", str(pth), str(pth), "--force")
    assert "source file itself" in one_line_error(result)
    assert pth.read_bytes() == pth_bytes
    from rwkv_cli.formats.convert import ConversionError, convert, quantize

    with pytest.raises(ConversionError, match="source file itself"):
        convert(pth, pth)  # the Python API refuses it too
    with pytest.raises(ConversionError, match="source file itself"):
        quantize(src, link, "Q8_0")


def test_an_unknown_quantization_type_fails_before_any_progress_bar(tmp_path, byte_v4):
    src = byte_v4
    result = run_cli(tmp_path, "quantize", str(src), str(tmp_path / "x.bin"), "Q9_9")
    assert "Q9_9" in one_line_error(result)
    assert "Quantizing" not in result.stdout + result.stderr
    assert not list(tmp_path.glob("*x.bin*"))
    converted = run_cli(tmp_path, "convert", str(src), str(tmp_path / "y.bin"), "--type", "Q4_0")
    assert "Q4_0" in one_line_error(converted) and "Converting" not in converted.stdout


def test_a_corrupt_registry_blocks_only_the_commands_that_need_it(tmp_path, byte_v4):
    home = tmp_path / "home"
    home.mkdir()
    (home / "models.json").write_text('{"models": {"x": ')  # cut short
    model = str(byte_v4)
    done = run_cli(home, "complete", "hi", "--model-path", model, "--max-tokens", "2")
    assert done.returncode == 0, done.stderr
    bench = run_cli(home, "--dragon", "-n", "2", "--json", "--modelPath", model)
    assert bench.returncode == 0, bench.stderr
    for args in (("models",), ("chat",), ("default", "x")):
        line = one_line_error(run_cli(home, *args))
        assert str(home / "models.json") in line and "move it away" in line, line


def test_the_registry_stores_paths_relative_to_the_home_so_a_moved_home_works(tmp_path,
                                                                              monkeypatch, byte_v4):
    from rwkv_cli.app import home as home_module

    old_home, new_home = tmp_path / "old", tmp_path / "new"
    monkeypatch.setenv("RWKV_HOME", str(old_home))
    path = copy_of(byte_v4, old_home / "models", "tiny.bin")
    home_module.register_model(home_module.InstalledModel(name="tiny", path=str(path), arch="4"))
    raw = json.loads((old_home / "models.json").read_text())
    assert raw["models"]["tiny"]["path"] == "models/tiny.bin"
    assert sorted(p.name for p in old_home.iterdir()) == ["models", "models.json"]  # no temp file left
    old_home.rename(new_home)
    listed = json.loads(run_cli(new_home, "models", "--json").stdout)
    assert listed[0]["present"] and listed[0]["path"] == str(new_home / "models" / "tiny.bin")
    done = run_cli(new_home, "complete", "hi", "--max-tokens", "2", "--json")
    assert done.returncode == 0, done.stderr


def test_errors_name_the_cli_flags_not_the_python_parameters(tmp_path, byte_v4):
    from rwkv_cli.app.terms import cli_terms

    model = str(byte_v4)
    gpu = one_line_error(run_cli(tmp_path, "complete", "hi", "--gpu", "2", "--model-path", model))
    assert "--gpu" in gpu and "gpu_offload" not in gpu
    top_p = one_line_error(run_cli(tmp_path, "complete", "hi", "--top-p", "0", "--model-path",
                                   model))
    assert "--top-p" in top_p
    empty = one_line_error(run_cli(tmp_path, "complete", "", "--model-path", model))
    assert "init_state" not in empty and "prompt is empty" in empty
    assert cli_terms("top_p must be in (0, 1], got 2") == "--top-p must be in (0, 1], got 2"
    assert cli_terms("max_tokens must be an integer >= 0") == "--max-tokens must be an integer >= 0"
    assert "init_state" not in cli_terms("init_state has 3 values, this model's state has 4")


def test_a_checkpoint_or_a_folder_given_as_a_model_says_what_to_do(tmp_path):
    for name in ("model.pth", "model.safetensors"):
        checkpoint = tmp_path / name
        checkpoint.write_bytes(b"PK\x03\x04 not really a model")
        line = one_line_error(run_cli(tmp_path, "--modelPath", str(checkpoint)))
        assert "rwkv-cpp convert" in line and name in line
    line = one_line_error(run_cli(tmp_path, "complete", "hi", "--model-path", str(tmp_path)))
    assert "is a directory" in line


def test_a_deleted_default_model_says_so_and_how_to_reinstall_it(tmp_path, monkeypatch,
                                                                  byte_v4):
    from rwkv_cli.app import home as home_module

    home = tmp_path / "home"
    monkeypatch.setenv("RWKV_HOME", str(home))
    path = copy_of(byte_v4, home / "models", "rwkv7-g1-0.1b-Q8_0.bin")
    home_module.register_model(home_module.InstalledModel(
        name="rwkv7-g1-0.1b-Q8_0", path=str(path), data_type="Q8_0", catalog_name="rwkv7-g1-0.1b"))
    path.unlink()
    for args in ((), ("complete", "hi"), ("--dragon",)):
        line = one_line_error(run_cli(home, *args))
        assert "no model installed" not in line and "gone" in line
        assert "rwkv-cpp setup --model rwkv7-g1-0.1b --type Q8_0 --yes" in line


def test_a_vocabulary_no_tokenizer_fits_can_be_run_with_tokenizer(tmp_path):
    from rwkv_cli.formats.synthetic import write_random_model

    # no fixture has a vocabulary that fits no tokenizer: a model of 300 tokens
    model = str(write_random_model(tmp_path / "odd-vocab.bin", "4", 1, 32, 300))
    line = one_line_error(run_cli(tmp_path, "complete", "hi", "--model-path", model))
    assert "--tokenizer" in line and "tokenizer=" not in line
    done = run_cli(tmp_path, "complete", "hi", "--model-path", model, "--tokenizer", "bytes",
                   "--max-tokens", "3", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["usage"]["promptTokens"] == 2
    bad = one_line_error(run_cli(tmp_path, "complete", "hi", "--model-path", model,
                                 "--tokenizer", "klingon"))
    assert "--tokenizer klingon" in bad


@pytest.mark.parametrize("args, expected", [
    (("--frobnicate",), "No such option"),
    (("frobnicate",), "No such command"),
    (("convert",), "Missing argument"),
    (("complete", "hi", "--max-tokens", "lots"), "--max-tokens"),
    (("chat", "--top-p", "2"), "--top-p"),
])
def test_usage_errors_are_one_line_with_a_hint(tmp_path, args, expected):
    result = run_cli(tmp_path, *args)
    line = one_line_error(result)
    assert result.returncode == 2
    assert expected in line and "--help" in line


@pytest.mark.parametrize("args, flag", [
    (("--size", "5"), "--size"),
    (("--json",), "--json"),
    (("chat", "--model-path", "x.bin", "--json"), None),  # chat has no --json: a usage error
    (("--yes",), "--yes"),
    (("--type", "Q8_0", "--dragon"), "--type"),
    (("--temperature", "0.5", "--dragon"), "--temperature"),
    (("--threads", "2", "convert", "a.pth", "b.bin"), "--threads"),
])
def test_options_that_do_nothing_in_the_chosen_mode_are_errors(tmp_path, args, flag):
    line = one_line_error(run_cli(tmp_path, *args))
    if flag is not None:
        assert line.startswith(f"error: {flag} does nothing"), line


def test_help_shows_the_sampling_defaults_and_the_benchmark_shape(runner):
    from rwkv_cli.app.bench import SYNTHETIC_SHAPE, SYNTHETIC_TYPE

    chat = runner.invoke(app, ["chat", "--help"]).output
    for default in ("1.0", "0.7", "250"):
        assert f"[default: {default}]" in chat, default
    assert "[default: 64]" in runner.invoke(app, ["complete", "--help"]).output
    bench = " ".join(runner.invoke(app, ["bench", "--help"]).output.split())
    shape = f"{SYNTHETIC_SHAPE['n_layer']} layers x {SYNTHETIC_SHAPE['n_embed']}"
    assert shape in bench and str(SYNTHETIC_SHAPE["n_vocab"]) in bench and SYNTHETIC_TYPE in bench


def test_models_never_truncates_a_path_when_piped(tmp_path, monkeypatch, byte_v4):
    from rwkv_cli.app import home as home_module

    home = tmp_path / ("a-home-with-a-rather-long-name-" * 4)
    monkeypatch.setenv("RWKV_HOME", str(home))
    name = "a-model-with-a-very-long-name-that-does-not-fit-in-eighty-columns-at-all"
    path = copy_of(byte_v4, home / "models", f"{name}.bin")
    home_module.register_model(home_module.InstalledModel(name=name, path=str(path), arch="4"))
    env = dict(os.environ, RWKV_HOME=str(home), COLUMNS="80")
    listed = subprocess.run([sys.executable, "-m", "rwkv_cli", "models"], env=env, text=True,
                            capture_output=True, timeout=60, check=True).stdout
    assert str(path) in listed and name in listed and "…" not in listed
    assert f"{name} *" in listed  # the default is marked


def test_rm_asks_and_default_switches_the_model_models_marks(tmp_path, monkeypatch, byte_v4):
    from rwkv_cli.app import home as home_module

    home = tmp_path / "home"
    monkeypatch.setenv("RWKV_HOME", str(home))
    paths = {}
    for name in ("first", "second"):
        paths[name] = copy_of(byte_v4, home / "models", f"{name}.bin")
        home_module.register_model(home_module.InstalledModel(name=name, path=str(paths[name])))

    def marked() -> list[str]:
        rows = json.loads(run_cli(home, "models", "--json").stdout)
        return [row["name"] for row in rows if row["default"]]

    assert marked() == ["second"]  # the last installed
    assert run_cli(home, "default", "first").returncode == 0
    assert marked() == ["first"]
    assert "nope" in one_line_error(run_cli(home, "default", "nope"))
    refused = one_line_error(run_cli(home, "rm", "first"))  # no terminal to ask in
    assert "--yes" in refused and paths["first"].exists()
    removed = run_cli(home, "rm", "first", "--yes")
    assert removed.returncode == 0, removed.stderr
    assert not paths["first"].exists() and "default model is now second" in removed.stdout
    assert marked() == ["second"]

    child = pexpect_spawn(home, "rm", "second")
    child.expect_exact("Remove second")
    child.send("n")
    child.expect(pexpect.EOF)
    assert paths["second"].exists()
    child = pexpect_spawn(home, "rm", "second")
    child.expect_exact("Remove second")
    child.send("y")
    child.expect(pexpect.EOF)
    assert not paths["second"].exists() and marked() == []


def pexpect_spawn(home, *args: str):
    env = dict(os.environ, RWKV_HOME=str(home), NO_COLOR="1", COLUMNS="160",
               PROMPT_TOOLKIT_NO_CPR="1")
    return pexpect.spawn(sys.executable, ["-m", "rwkv_cli", *args], env=env, encoding="utf-8",
                         timeout=30, dimensions=(30, 160))


def test_the_synthetic_model_says_its_size_first_is_listed_and_removable(tmp_path, monkeypatch,
                                                                          capsys):
    from rwkv_cli.app import bench
    from rwkv_cli.app.download import human_bytes
    from rwkv_cli.app.model_files import remove_model, show_installed
    from rwkv_cli.formats.synthetic import random_model_size

    # The same code path as the 0.1B shape, at a size a test can afford.
    monkeypatch.setattr(bench, "SYNTHETIC_SHAPE",
                        {"arch": "7", "n_layer": 1, "n_embed": 64, "n_vocab": 256})
    monkeypatch.setenv("RWKV_HOME", str(tmp_path / "home"))
    size = random_model_size("7", 1, 64, 256, bench.SYNTHETIC_TYPE)
    path = bench.ensure_synthetic_model()
    assert path.stat().st_size == size  # the size said before writing is the size written
    assert human_bytes(size) in capsys.readouterr().err
    from rich.console import Console

    show_installed(Console(width=200))
    listed = capsys.readouterr().out
    assert path.stem in listed and "(synthetic)" in listed
    remove_model(Console(), path.stem, yes=True)
    assert not path.exists()


def test_the_synthetic_size_is_known_before_writing(tmp_path):
    from rwkv_cli.formats.synthetic import random_model_size, write_random_model

    for arch, data_type in (("4", "FP16"), ("5.2", "Q5_1"), ("6", "Q4_0"), ("7", "Q8_0")):
        written = write_random_model(tmp_path / "m.bin", arch, 2, 64, 300, data_type=data_type)
        assert written.stat().st_size == random_model_size(arch, 2, 64, 300, data_type)


def read_only_home(tmp_path):
    """A home folder this process cannot write to."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    # root writes anywhere a mode allows nothing; sysfs refuses new folders even to root
    folder = "/sys/rwkv-cpp-test-home"
    try:
        os.mkdir(folder)
    except PermissionError:
        return folder
    os.rmdir(folder)
    pytest.skip("no read-only place to test with")


def test_a_read_only_home_is_one_line_naming_rwkv_home(tmp_path):
    home = read_only_home(tmp_path)
    line = one_line_error(run_cli(home, "--dragon", "-n", "1"))
    assert "RWKV_HOME" in line and str(home) in line
