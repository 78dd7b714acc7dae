"""`rwkv-cpp --setup` end to end: a test catalog, a real HTTP server on 127.0.0.1, RWKV_HOME in tmp."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import checkpoints
import pexpect
import pytest
from helpers import default_ctrl_c
from http_range_server import serve

from rwkv_cli.formats import modelfile
from rwkv_cli.formats.synthetic import write_random_model

HF = "resolve/main"


def run_cli(env: dict, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rwkv_cli", *args], check=False, env=env, capture_output=True, text=True,
        timeout=timeout, stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def site(tmp_path):
    """A mirror with a generated model, a checkpoint, and a test catalog naming them."""
    root = tmp_path / "www"
    model_dir = root / "test" / "tiny" / HF
    model_dir.mkdir(parents=True)
    model = write_random_model(model_dir / "tiny 4.bin", "4", n_layer=2, n_embed=32, n_vocab=256)
    data = model.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    entries = [
        {"name": "tiny-bin", "title": "Tiny v4", "arch": "4", "tokenizer": "bytes",
         "repo": "test/tiny", "file": "tiny 4.bin", "format": "bin", "download_size": len(data),
         "size": len(data), "sha256": sha, "quantization": "FP32", "prompt_format": "raven"},
        {"name": "tiny-bad-sha", "title": "Tiny, wrong checksum", "arch": "4",
         "tokenizer": "bytes", "repo": "test/tiny", "file": "tiny 4.bin", "format": "bin",
         "download_size": len(data), "sha256": "ab" * 32, "quantization": "FP32"},
        {"name": "tiny-missing", "title": "Tiny, not on the server", "arch": "4",
         "tokenizer": "bytes", "repo": "test/tiny", "file": "missing.bin", "format": "bin",
         "download_size": 1000, "quantization": "FP32"},
        {"name": "tiny-20b", "title": "Tiny with the 20B tokenizer", "arch": "4",
         "tokenizer": "20B", "repo": "test/tiny", "file": "tiny 4.bin", "format": "bin",
         "download_size": len(data), "sha256": sha, "quantization": "FP32"},
    ]
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps({"models": entries}))
    with serve(root) as server:
        env = dict(
            os.environ, RWKV_HOME=str(tmp_path / "home"), RWKV_CATALOG=str(catalog),
            RWKV_DOWNLOAD_BASE=server.base_url, NO_COLOR="1", COLUMNS="200",
        )
        yield {"server": server, "env": env, "data": data, "root": root, "catalog": catalog,
               "entries": entries, "home": tmp_path / "home"}


def registry(home: Path) -> dict:
    path = home / "models.json"
    return json.loads(path.read_text()) if path.exists() else {"models": {}, "last": None}


def test_non_interactive_setup_installs_verifies_and_registers(site):
    result = run_cli(site["env"], "--setup", "--model", "tiny-bin", "--yes")
    assert result.returncode == 0, result.stderr
    assert "Installed" in result.stdout
    reg = registry(site["home"])
    assert reg["last"] == "tiny-bin"
    entry = reg["models"]["tiny-bin"]
    assert entry["path"] == "models/tiny 4.bin"  # relative to RWKV_HOME
    assert (site["home"] / entry["path"]).read_bytes() == site["data"]
    assert (entry["arch"], entry["data_type"], entry["n_vocab"]) == ("4", "FP32", 256)
    assert not list((site["home"] / entry["path"]).parent.glob("*.part"))

    listed = json.loads(run_cli(site["env"], "models", "--json").stdout)
    assert [(m["name"], m["arch"], m["dataType"], m["last"]) for m in listed] == [
        ("tiny-bin", "4", "FP32", True)
    ]
    # The installed model is the default one now.
    done = run_cli(site["env"], "complete", "hi", "--max-tokens", "3", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["model"] == "tiny-bin"
    bench = run_cli(site["env"], "--dragon", "--size", "2", "--json")
    assert bench.returncode == 0, bench.stderr
    assert json.loads(bench.stdout)["model"] == "tiny-bin"
    assert json.loads(bench.stdout)["synthetic"] is False


def test_setup_again_uses_the_installed_model_without_downloading(site):
    assert run_cli(site["env"], "setup", "--model", "tiny-bin", "--yes").returncode == 0
    site["server"].requests.clear()
    again = run_cli(site["env"], "setup", "--model", "tiny-bin", "--yes")
    assert again.returncode == 0 and "already installed" in again.stdout
    assert site["server"].requests == []


def test_setup_resumes_a_partial_download(site):
    models = site["home"] / "models"
    models.mkdir(parents=True)
    half = len(site["data"]) // 2
    (models / "tiny 4.bin.part").write_bytes(site["data"][:half])
    result = run_cli(site["env"], "--setup", "--model", "tiny-bin", "--yes")
    assert result.returncode == 0, result.stderr
    assert "Resuming" in result.stdout
    assert ("GET", "/test/tiny/resolve/main/tiny 4.bin", f"bytes={half}-") in site["server"].requests
    assert (models / "tiny 4.bin").read_bytes() == site["data"]


def test_wrong_checksum_leaves_no_installed_model(site):
    result = run_cli(site["env"], "--setup", "--model", "tiny-bad-sha", "--yes")
    assert result.returncode == 1
    assert "checksum mismatch" in result.stderr and "Traceback" not in result.stderr
    assert registry(site["home"])["models"] == {}
    assert not [p for p in (site["home"] / "models").iterdir()]
    # ... and the chat then says how to get one.
    chat = run_cli(site["env"])
    assert chat.returncode == 1 and "rwkv-cpp --setup" in chat.stderr


def test_missing_file_on_the_server_is_a_clear_one_line_error(site):
    result = run_cli(site["env"], "--setup", "--model", "tiny-missing", "--yes")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "404" in lines[0] and "missing.bin" in lines[0]
    assert registry(site["home"])["models"] == {}


def test_unknown_model_name_lists_the_catalog(site):
    result = run_cli(site["env"], "--setup", "--model", "nope", "--yes")
    assert result.returncode == 1 and "tiny-bin" in result.stderr


def test_setup_without_a_terminal_or_a_name_says_what_to_pass(site):
    result = run_cli(site["env"], "--setup")
    assert result.returncode == 1 and "--model NAME --yes" in result.stderr


def test_catalog_listing(site):
    result = run_cli(site["env"], "setup", "--list")
    assert result.returncode == 0
    for entry in site["entries"]:
        assert entry["name"] in result.stdout


def test_20b_models_get_the_verified_tokenizer(site, bpe_tokenizer_json):
    """A tiny BPE file stands in for the 20B tokenizer, with the test catalog's checksum of it
    (the built-in catalog's checksum of the real file: test_shared_tokenizer_20b.py)."""
    asset_dir = site["root"] / "BlinkDL" / "ChatRWKV" / HF
    asset_dir.mkdir(parents=True)
    data = Path(bpe_tokenizer_json).read_bytes()
    catalog = json.loads(site["catalog"].read_text())
    catalog["assets"] = {"20B_tokenizer": {
        "repo": "BlinkDL/ChatRWKV", "file": "20B_tokenizer.json", "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest()}}
    site["catalog"].write_text(json.dumps(catalog))
    installed = site["home"] / "20B_tokenizer.json"
    # A file other than the one the catalog names is refused, and nothing is installed...
    (asset_dir / "20B_tokenizer.json").write_bytes(data.replace(b"dragon", b"DRAGON"))
    wrong = run_cli(site["env"], "--setup", "--model", "tiny-20b", "--yes")
    assert wrong.returncode == 1 and "checksum mismatch" in wrong.stderr
    assert not installed.exists() and registry(site["home"])["models"] == {}
    # ...the right one is.
    (asset_dir / "20B_tokenizer.json").write_bytes(data)
    result = run_cli(site["env"], "--setup", "--model", "tiny-20b", "--yes")
    assert result.returncode == 0, result.stderr
    assert installed.read_bytes() == data
    stored = registry(site["home"])["models"]["tiny-20b"]["tokenizer_path"]
    assert site["home"] / stored == installed


def test_checkpoint_is_converted_and_quantized_and_intermediates_removed(site):
    shape = checkpoints.Shape(n_layer=2, n_embed=64, n_vocab=256, head_size=16)
    tensors = checkpoints.raw_checkpoint("7", shape)
    src = site["root"] / "test" / "tiny" / HF / "tiny-v7.pth"
    checkpoints.write_pth(src, tensors, dtype="BF16")
    catalog = json.loads(site["catalog"].read_text())
    catalog["models"].append(
        {"name": "tiny-pth", "title": "Tiny v7 checkpoint", "arch": "7", "tokenizer": "bytes",
         "repo": "test/tiny", "file": "tiny-v7.pth", "format": "pth",
         "download_size": src.stat().st_size, "quantization": "Q8_0"}
    )
    site["catalog"].write_text(json.dumps(catalog))

    result = run_cli(site["env"], "--setup", "--model", "tiny-pth", "--type", "Q5_1", "--yes")
    assert result.returncode == 0, result.stderr
    entry = registry(site["home"])["models"]["tiny-pth-Q5_1"]
    assert (entry["arch"], entry["data_type"], entry["n_embed"]) == ("7", "Q5_1", 64)
    assert Path(entry["path"]).name == "tiny-pth-Q5_1.bin"
    assert list((site["home"] / "downloads").iterdir()) == []


def test_setup_can_quantize_the_head_of_a_checkpoint_too(site):
    shape = checkpoints.Shape(n_layer=2, n_embed=64, n_vocab=256, head_size=16)
    src = site["root"] / "test" / "tiny" / HF / "tiny-v7.pth"
    checkpoints.write_pth(src, checkpoints.raw_checkpoint("7", shape), dtype="BF16")
    catalog = json.loads(site["catalog"].read_text())
    catalog["models"].append(
        {"name": "tiny-pth", "title": "Tiny v7 checkpoint", "arch": "7", "tokenizer": "bytes",
         "repo": "test/tiny", "file": "tiny-v7.pth", "format": "pth",
         "download_size": src.stat().st_size, "quantization": "Q8_0"}
    )
    site["catalog"].write_text(json.dumps(catalog))

    # a ready-made file cannot get one, and a bad type is refused before any download
    refused = run_cli(site["env"], "--setup", "--model", "tiny-bin", "--head-type", "Q8_0", "--yes")
    assert refused.returncode != 0 and "ready-made" in refused.stderr
    refused = run_cli(site["env"], "setup", "--model", "tiny-pth", "--head-type", "Q3_K", "--yes")
    assert refused.returncode != 0 and "--head-type" in refused.stderr
    assert registry(site["home"])["models"] == {}

    result = run_cli(site["env"], "--setup", "--model", "tiny-pth", "--type", "Q4_0",
                     "--head-type", "q8_0", "--yes")
    assert result.returncode == 0, result.stderr
    entry = registry(site["home"])["models"]["tiny-pth-Q4_0-head-Q8_0"]
    assert (entry["data_type"], entry["head_type"]) == ("Q4_0", "Q8_0")
    infos = {i.key: i.data_type_name for i in modelfile.list_tensors(site["home"] / entry["path"])}
    assert infos["head.weight"] == "Q8_0" and infos["emb.weight"] == "FP16"
    listed = json.loads(run_cli(site["env"], "models", "--json").stdout)
    assert [(m["dataType"], m["headType"]) for m in listed] == [("Q4_0", "Q8_0")]
    table = run_cli(site["env"], "models").stdout
    assert "Q4_0, head Q8_0" in table


def test_interactive_picker_installs_the_chosen_model(site):
    child = pexpect.spawn(sys.executable, ["-m", "rwkv_cli", "--setup"], env=site["env"],
                          encoding="utf-8", timeout=30, dimensions=(30, 160))
    child.expect_exact("Which model?")
    child.expect_exact("Tiny, not on the server")  # the whole list is drawn
    child.send("\x1b[B")  # arrow down: the second entry...
    child.send("\x1b[A")  # ...and back up to the first, "tiny-bin"
    child.send("\r")
    child.expect_exact("Continue?")
    child.send("\r")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert registry(site["home"])["last"] == "tiny-bin"


def test_checkpoints_newer_than_the_catalog_are_discovered_and_installable(site):
    shape = checkpoints.Shape(n_layer=1, n_embed=32, n_vocab=256, head_size=16)
    folder = site["root"] / "test" / "tiny" / HF
    checkpoints.write_pth(folder / "tiny-v7.pth", checkpoints.raw_checkpoint("7", shape))
    new = folder / "rwkv7-tiny-new-20260101.pth"
    checkpoints.write_pth(new, checkpoints.raw_checkpoint("7", shape, seed=5))
    catalog = json.loads(site["catalog"].read_text())
    catalog["models"].append(
        {"name": "tiny-pth", "title": "Tiny v7", "arch": "7", "tokenizer": "bytes",
         "repo": "test/tiny", "file": "tiny-v7.pth", "format": "pth", "download_size": 1,
         "quantization": "Q8_0"}
    )
    site["catalog"].write_text(json.dumps(catalog))
    api = site["root"] / "api" / "models" / "test"
    api.mkdir(parents=True)
    siblings = [{"rfilename": "tiny-v7.pth", "size": 1}, {"rfilename": "README.md", "size": 9},
                {"rfilename": new.name, "size": new.stat().st_size,
                 "lfs": {"sha256": hashlib.sha256(new.read_bytes()).hexdigest()}}]
    (api / "tiny").write_text(json.dumps({"id": "test/tiny", "siblings": siblings}))

    listed = run_cli(site["env"], "setup", "--list", "--refresh")
    assert "rwkv7-tiny-new-20260101" in listed.stdout and "tiny-pth" in listed.stdout
    assert "rwkv7-tiny-new" not in run_cli(site["env"], "setup", "--list").stdout
    result = run_cli(site["env"], "--setup", "--model", "rwkv7-tiny-new-20260101", "--type",
                     "fp16", "--yes")
    assert result.returncode == 0, result.stderr
    entry = registry(site["home"])["models"]["rwkv7-tiny-new-20260101-FP16"]
    assert (entry["arch"], entry["data_type"]) == ("7", "FP16")
    offline = dict(site["env"], RWKV_OFFLINE="1")
    assert "rwkv7-tiny-new" not in run_cli(offline, "setup", "--list", "--refresh").stdout


def test_ctrl_c_during_the_download_keeps_the_part_and_setup_resumes(site):
    site["server"].throttle = 0.2  # about 4 s for the whole file
    child = pexpect.spawn(sys.executable, ["-m", "rwkv_cli", "--setup", "--model", "tiny-bin",
                                           "--yes"], env=site["env"], encoding="utf-8",
                          timeout=30, dimensions=(30, 160), preexec_fn=default_ctrl_c)
    child.expect(r"[1-9]\d*\.\d/\d+\.\d kB")  # some bytes arrived
    child.sendintr()
    child.expect_exact("download interrupted")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 130  # what a shell expects after Ctrl-C
    part = site["home"] / "models" / "tiny 4.bin.part"
    assert 0 < part.stat().st_size < len(site["data"])
    assert registry(site["home"])["models"] == {}

    site["server"].throttle = 0.0
    again = run_cli(site["env"], "--setup", "--model", "tiny-bin", "--yes")
    assert again.returncode == 0, again.stderr
    assert "Resuming" in again.stdout
    assert (site["home"] / "models" / "tiny 4.bin").read_bytes() == site["data"]


def test_first_run_in_a_terminal_offers_the_setup_then_chats(site):
    child = pexpect.spawn(sys.executable, ["-m", "rwkv_cli"], env=site["env"], encoding="utf-8",
                          timeout=30, dimensions=(30, 160))
    child.expect_exact("Pick and download one now?")
    child.send("\r")
    child.expect_exact("Which model?")
    child.send("\r")  # the first entry, tiny-bin
    child.expect_exact("Continue?")
    child.send("\r")
    child.expect_exact("Installed")
    child.expect_exact("Ctrl-D to quit")  # ...and the chat starts with it
    child.expect_exact("User:")
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert registry(site["home"])["last"] == "tiny-bin"


def test_a_server_that_keeps_failing_gives_up_after_retries_with_one_line(site):
    site["server"].fail_times["/test/tiny/resolve/main/tiny 4.bin"] = 1000
    env = dict(site["env"], RWKV_DOWNLOAD_BACKOFF="0")
    result = run_cli(env, "--setup", "--model", "tiny-bin", "--yes")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "after 6 attempts" in lines[0] and "503" in lines[0]
    assert registry(site["home"])["models"] == {}


# ---- issue 15 ----

LONG_NAME = "tiny-with-a-name-long-enough-that-a-table-of-eighty-columns-would-cut-it-short"


def add_entry(site, **entry) -> None:
    catalog = json.loads(site["catalog"].read_text())
    base = dict(site["entries"][0])
    base.update(entry)
    catalog["models"].append(base)
    site["catalog"].write_text(json.dumps(catalog))


def test_setup_list_names_every_model_in_full_even_piped_and_as_json(site):
    add_entry(site, name=LONG_NAME, title="Tiny, long name", notes="A note for the picker")
    env = dict(site["env"], COLUMNS="80")
    for args in (("setup", "--list"), ("--setup", "--list")):
        listed = run_cli(env, *args)
        assert listed.returncode == 0, listed.stderr
        assert LONG_NAME in listed.stdout and "…" not in listed.stdout
        assert "A note for the picker" in listed.stdout
    rows = json.loads(run_cli(env, "setup", "--list", "--json").stdout)
    by_name = {row["name"]: row for row in rows}
    assert set(by_name) == {e["name"] for e in site["entries"]} | {LONG_NAME}
    row = by_name["tiny-bin"]
    assert row["downloadBytes"] == len(site["data"]) and row["installed"] is False
    assert row["ramBytes"] > row["fileBytes"] > 0
    assert json.loads(run_cli(env, "--setup", "--list", "--json").stdout) == rows
    # the listing does not need the registry: a broken one is no obstacle
    site["home"].mkdir(parents=True, exist_ok=True)
    (site["home"] / "models.json").write_text("{broken")
    assert run_cli(env, "setup", "--list").returncode == 0


def test_the_picker_shows_the_catalog_notes(site):
    catalog = json.loads(site["catalog"].read_text())
    catalog["models"][0]["notes"] = "Small and quick: a good first model"
    site["catalog"].write_text(json.dumps(catalog))
    child = pexpect.spawn(sys.executable, ["-m", "rwkv_cli", "--setup"], env=site["env"],
                          encoding="utf-8", timeout=30, dimensions=(30, 160), preexec_fn=default_ctrl_c)
    child.expect_exact("Which model?")
    child.expect_exact("Small and quick: a good first model")
    child.sendintr()
    child.expect(pexpect.EOF)


# Runs `rwkv-cpp` and writes the peak resident set of its own memory image (VmHWM) when it
# exits. (A child's ru_maxrss would not do: it starts from the forking process's resident set,
# which is the whole test session's.)
PEAK_RSS_RUNNER = """
import atexit, re, runpy, sys

def report(path=sys.argv[1]):
    status = open("/proc/self/status").read()
    open(path, "w").write(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1))

atexit.register(report)
sys.argv = ["rwkv-cpp"] + sys.argv[2:]
runpy.run_module("rwkv_cli", run_name="__main__")
"""


def test_the_ram_estimate_covers_a_measured_run_with_the_world_tokenizer(tmp_path, world_v7):
    from rwkv_cli.app.catalog import estimate_ram_bytes

    if not Path("/proc/self/status").exists():
        pytest.skip("no /proc to read the peak memory from")
    model = Path(world_v7)
    env = dict(os.environ, RWKV_HOME=str(tmp_path / "home"))
    peak = tmp_path / "peak"
    subprocess.run(
        [sys.executable, "-c", PEAK_RSS_RUNNER, str(peak), "complete",
         "The dragons of Tibet " * 8, "--model-path", str(model), "--max-tokens", "8"],
        env=env, check=True, capture_output=True, timeout=60,
    )
    measured = int(peak.read_text()) * 1024
    estimate = estimate_ram_bytes(model.stat().st_size, "world")
    # The tokenizer's tables are most of it here; the old estimate (file + 10% + 64 MiB) said
    # under 90 MB for what takes over 300.
    assert 0.85 * measured <= estimate <= 1.5 * measured, (estimate, measured)


def test_retries_are_shown_as_they_happen(site):
    site["server"].fail_times["/test/tiny/resolve/main/tiny 4.bin"] = 2
    env = dict(site["env"], RWKV_DOWNLOAD_BACKOFF="0")
    result = run_cli(env, "setup", "--model", "tiny-bin", "--yes")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("retrying in 0 s: HTTP 503") == 2


def test_giving_up_says_how_to_resume(site):
    site["server"].drop_after["/test/tiny/resolve/main/tiny 4.bin"] = len(site["data"]) // 2
    site["server"].fail_after_drop["/test/tiny/resolve/main/tiny 4.bin"] = 100
    env = dict(site["env"], RWKV_DOWNLOAD_BACKOFF="0")
    result = run_cli(env, "setup", "--model", "tiny-bin", "--yes")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1
    assert ".part" in lines[0] and "run the same command again to resume" in lines[0]


@pytest.mark.parametrize("base", ["localhost:8000", "ftp://mirror/x", "https://"])
def test_a_malformed_mirror_is_refused_before_any_request(site, base):
    for env, args in ((site["env"], ("--base-url", base)),
                      (dict(site["env"], RWKV_DOWNLOAD_BASE=base), ())):
        result = run_cli(env, "setup", "--model", "tiny-bin", "--yes", *args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1 and "http(s) address" in lines[0]
    assert site["server"].requests == []


def test_an_unknown_mirror_host_fails_at_once(site):
    env = dict(site["env"], RWKV_DOWNLOAD_BASE="http://no-such-mirror.invalid")
    result = run_cli(env, "setup", "--model", "tiny-bin", "--yes", timeout=20)
    assert result.returncode == 1 and "unknown host" in result.stderr
    assert "retrying" not in result.stdout


def test_a_lost_registry_is_rebuilt_by_setup_without_downloading(site):
    assert run_cli(site["env"], "setup", "--model", "tiny-bin", "--yes").returncode == 0
    (site["home"] / "models.json").write_text("{not json")
    broken = run_cli(site["env"], "setup", "--model", "tiny-bin", "--yes")
    assert broken.returncode == 1 and "models.json" in broken.stderr and "mv " in broken.stderr
    (site["home"] / "models.json").unlink()
    site["server"].requests.clear()
    again = run_cli(site["env"], "setup", "--model", "tiny-bin", "--yes")
    assert again.returncode == 0, again.stderr
    assert site["server"].requests == [] and registry(site["home"])["last"] == "tiny-bin"


@pytest.mark.parametrize("data_type", ["Q8_0", "Q5_1", "Q4_0", "FP16"])
def test_the_installed_size_of_a_checkpoint_counts_the_fp16_embedding_and_head(data_type):
    from rwkv_cli.app.catalog import CatalogModel
    from rwkv_cli.formats.synthetic import random_model_size

    # The RWKV-7 0.1B checkpoint: 381.1 MB of BF16, 12 x 768, vocabulary 65536.
    entry = CatalogModel(name="g1", title="G1", arch="7", tokenizer="world", repo="r", file="f",
                         format="pth", download_size=381_100_000, quantization="Q8_0",
                         n_embed=768)
    actual = random_model_size("7", 12, 768, 65536, data_type)  # what the writer produces
    assert abs(entry.model_bytes(data_type) - actual) < 0.05 * actual


def test_gguf_entries_install_as_they_are_and_new_ones_are_discovered(site):
    from gguf_writer import write_rwkv_gguf

    from rwkv_cli.formats.synthetic import random_tensors

    folder = site["root"] / "test" / "gguf" / HF
    folder.mkdir(parents=True)

    def gguf_file(name, seed):
        path = folder / name
        write_rwkv_gguf(path, "7", random_tensors("7", 1, 64, 256, 32, seed=seed), 1, 64, 32,
                        kind="Q8_0", file_type=7, keep_values=False)
        return path

    known = gguf_file("rwkv7-tiny-Q8_0.gguf", 1)
    new = gguf_file("rwkv7-tiny-new-Q8_0.gguf", 2)
    catalog = json.loads(site["catalog"].read_text())
    catalog["models"].append(
        {"name": "tiny-gguf", "title": "Tiny v7 GGUF", "arch": "7", "tokenizer": "bytes",
         "repo": "test/gguf", "file": known.name, "format": "gguf", "quantization": "Q8_0",
         "download_size": known.stat().st_size, "size": known.stat().st_size,
         "sha256": hashlib.sha256(known.read_bytes()).hexdigest()}
    )
    site["catalog"].write_text(json.dumps(catalog))
    result = run_cli(site["env"], "--setup", "--model", "tiny-gguf", "--yes")
    assert result.returncode == 0, result.stderr
    entry = registry(site["home"])["models"]["tiny-gguf"]
    assert (site["home"] / entry["path"]).read_bytes() == known.read_bytes()  # used as it is
    assert (entry["arch"], entry["data_type"], entry["n_vocab"], entry["n_layer"]) == ("7", "Q8_0", 256, 1)
    done = run_cli(site["env"], "complete", "hello", "--max-tokens", "4", "--temperature", "0")
    assert done.returncode == 0, done.stderr

    api = site["root"] / "api" / "models" / "test"
    api.mkdir(parents=True)
    siblings = [{"rfilename": known.name, "size": known.stat().st_size},
                {"rfilename": new.name, "size": new.stat().st_size},
                {"rfilename": "notes.txt", "size": 4}]
    (api / "gguf").write_text(json.dumps({"id": "test/gguf", "siblings": siblings}))
    listed = run_cli(site["env"], "setup", "--list", "--refresh")
    assert "rwkv7-tiny-new-q8-0" in listed.stdout
    result = run_cli(site["env"], "--setup", "--model", "rwkv7-tiny-new-q8-0", "--yes")
    assert result.returncode == 0, result.stderr
    entry = registry(site["home"])["models"]["rwkv7-tiny-new-q8-0"]
    assert Path(entry["path"]).name == new.name and entry["data_type"] == "Q8_0"
