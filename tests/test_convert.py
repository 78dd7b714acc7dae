"""Converting raw RWKV checkpoints (.pth / .safetensors / Hugging Face folders, no torch) to
rwkv.cpp files.

Checkpoints are written by tests/checkpoints.py (torch's zip layout, FP32/FP16/BF16). The
expected stored tensors are computed here, independently of the converter, from the format's
facts; the converted files are then run through the NumPy reference and through the engine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from checkpoints import (
    ARCHES,
    ELEMENT_TYPES,
    TOKENS,
    Shape,
    as_stored,
    engine_logits,
    hf_tensors,
    raw_checkpoint,
    reference_logits,
    write_hf_checkpoint,
    write_pth,
    write_safetensors,
)
from reference import Reference

from rwkv_cli.formats import modelfile
from rwkv_cli.formats.convert import (
    ConversionError,
    convert,
    detect_checkpoint_arch,
    quantize,
)
from rwkv_cli.formats.pth import read_pth, read_stored

V7_MIXES = ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g")
V7_LOW_RANK = ("w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2")


# ----------------------------------------------------------------------------------------------
# The independent expectation: what rwkv.cpp's converter stores for a raw checkpoint


def expected_file(arch: str, raw: dict[str, np.ndarray], data_type: str):
    """[(key, float32 values, type name)] in checkpoint order, written from the format facts."""
    n_head = {
        "4": 1,
        "5.1": raw["blocks.0.att.time_decay"].size if arch == "5.1" else 0,
        "5.2": raw["blocks.0.att.time_faaaa"].shape[0] if arch == "5.2" else 0,
        "6": raw["blocks.0.att.time_faaaa"].shape[0] if arch == "6" else 0,
        "7": raw["blocks.0.att.r_k"].shape[0] if arch == "7" else 0,
    }[arch]
    out: list[tuple[str, np.ndarray]] = []
    for key, w in raw.items():
        w64 = w.astype(np.float64)
        name = key.rsplit(".", 1)[-1] if key.startswith("blocks.") else key
        if arch == "7" and key.startswith("blocks.0.att.v") and name in ("v0", "v1", "v2"):
            continue  # layer 0 takes no v_first mix
        if arch == "7" and name in V7_MIXES and ".att." in key:
            if name == "x_r":
                prefix = key[: -len("x_r")]
                out.append((prefix + "x_rwkvag",
                            np.stack([raw[prefix + m].reshape(1, -1) for m in V7_MIXES])))
            continue
        if arch == "4" and name == "time_decay":
            value = -np.exp(w64)
        elif arch in ("5.1", "5.2") and name == "time_decay":
            value = np.exp(-np.exp(w64)).reshape(n_head, -1, 1)
        elif arch == "5.1" and name == "time_first":
            value = np.exp(w64).reshape(n_head, 1, 1)
        elif (arch in ("5.2", "6") and name == "time_faaaa") or (arch, name) == ("6", "time_decay"):
            value = w64.reshape(n_head, -1, 1)
        elif arch == "6" and name in ("time_maa_w1", "time_decay_w1", "time_decay_w2"):
            value = w64.T
        elif arch == "6" and name == "time_maa_w2":
            value = np.swapaxes(w64, 1, 2)
        elif arch == "7" and name in V7_LOW_RANK:
            value = w64.T
        elif ".time_" in key:
            value = w64.reshape(-1)
        else:
            value = w64
        out.append((key, value))
    typed = []
    for key, value in out:
        # rwkv.cpp keeps r_k and every time_* tensor (v6's low-rank ones too) in FP32
        keep = key.endswith("att.r_k") or key.rsplit(".", 1)[-1].startswith("time_")
        half = data_type == "FP16" and value.ndim == 2 and not keep
        typed.append((key, value.astype(np.float32), "FP16" if half else "FP32"))
    return typed


def stored_raw(raw: dict[str, np.ndarray], dtype: str) -> OrderedDict[str, np.ndarray]:
    return OrderedDict((k, as_stored(v, dtype)) for k, v in raw.items())


def check_file_against(path: Path, expected) -> None:
    infos = modelfile.list_tensors(path)
    assert [i.key for i in infos] == [key for key, _, _ in expected]
    for info, (key, value, type_name) in zip(infos, expected):
        assert info.shape == value.shape, key
        assert info.data_type_name == type_name, key
        got = modelfile.read_tensor(path, info)
        want = value.astype(np.float16).astype(np.float32) if type_name == "FP16" else value
        np.testing.assert_allclose(got, want, rtol=2.5e-7, atol=0, err_msg=key)


# ----------------------------------------------------------------------------------------------
# Engine and reference runs


def raw_reference_logits(arch: str, raw: dict[str, np.ndarray], tokens=TOKENS) -> np.ndarray:
    """The reference over the expected FP32 tensors, computed without the converter."""
    tensors = {key: value for key, value, _ in expected_file(arch, raw, "FP32")}
    emb = raw["emb.weight"]
    n_layer = 1 + max(int(k.split(".")[1]) for k in raw if k.startswith("blocks."))
    ref = Reference(tensors, n_layer, emb.shape[1], emb.shape[0], arch=arch)
    state, rows = ref.init_state(), []
    for token in tokens:
        logits, state = ref.forward(token, state)
        rows.append(logits)
    return np.stack(rows)


# ----------------------------------------------------------------------------------------------
# The .pth reader


@pytest.mark.parametrize("dtype", ELEMENT_TYPES)
def test_pth_reader_returns_stored_values_including_strided_views(tmp_path, dtype):
    raw = raw_checkpoint("6", seed=3)
    path = write_pth(tmp_path / "m.pth", raw, dtype,
                     transposed=["emb.weight", "blocks.1.att.key.weight"])
    records = read_pth(path)
    assert [r.key for r in records] == list(raw)
    by_key = {r.key: r for r in records}
    assert by_key["emb.weight"].stride == (1, raw["emb.weight"].shape[0])
    for record in records:
        np.testing.assert_array_equal(read_stored(path, record), as_stored(raw[record.key], dtype))


def test_pth_reader_handles_tensors_sharing_one_storage(tmp_path):
    raw = raw_checkpoint("4", seed=4)
    path = write_pth(tmp_path / "m.pth", raw, "F16", shared_storage=True)
    records = read_pth(path)
    assert len({r.data_offset for r in records}) == len(records)
    for record in records:
        np.testing.assert_array_equal(read_stored(path, record), as_stored(raw[record.key], "F16"))


# ----------------------------------------------------------------------------------------------
# Architecture detection and values


@pytest.mark.parametrize("arch", ARCHES)
def test_detects_architecture_of_raw_checkpoints(arch):
    assert detect_checkpoint_arch(raw_checkpoint(arch).keys()) == arch


@pytest.mark.parametrize("dtype", ELEMENT_TYPES)
@pytest.mark.parametrize("arch", ARCHES)
def test_converted_tensors_are_the_format_transforms_of_the_raw_weights(tmp_path, arch, dtype):
    raw = raw_checkpoint(arch, Shape(n_layer=2, n_embed=32, head_size=8), seed=11)
    src = write_pth(tmp_path / "m.pth", raw, dtype, transposed=["blocks.0.att.key.weight"])
    for data_type in ("FP32", "FP16"):
        dest = tmp_path / f"m-{data_type}.bin"
        info = convert(src, dest, data_type)
        header = modelfile.read_header(dest)
        assert (header.version, header.n_vocab, header.n_embed, header.n_layer) == (101, 50, 32, 2)
        assert header.data_type_name == data_type
        assert info["arch"] == arch and info["bytes"] == dest.stat().st_size
        check_file_against(dest, expected_file(arch, stored_raw(raw, dtype), data_type))


@pytest.mark.parametrize("arch", ARCHES)
def test_converted_model_computes_the_logits_of_the_raw_weights(tmp_path, arch):
    raw = raw_checkpoint(arch, Shape(n_layer=2, n_embed=32, head_size=8), seed=5)
    src = write_pth(tmp_path / "m.pth", raw, "F32")
    dest = tmp_path / "m.bin"
    convert(src, dest, "FP32")
    want = raw_reference_logits(arch, raw)
    np.testing.assert_allclose(reference_logits(dest), want, atol=1e-5)
    np.testing.assert_allclose(engine_logits(dest), want, atol=2e-4)


@pytest.mark.parametrize("dtype", ("F16", "BF16"))
@pytest.mark.parametrize("arch", ARCHES)
def test_half_checkpoints_run_in_the_engine_like_the_reference(tmp_path, arch, dtype):
    raw = raw_checkpoint(arch, seed=6)
    src = write_pth(tmp_path / "m.pth", raw, dtype)
    dest = tmp_path / "m.bin"
    convert(src, dest, "FP16")
    np.testing.assert_allclose(engine_logits(dest), reference_logits(dest), atol=2e-3)


def test_v7_layer0_value_mix_is_dropped_whether_present_or_not(tmp_path):
    shape = Shape(n_layer=3)
    with_v = write_pth(tmp_path / "a.pth", raw_checkpoint("7", shape, seed=9))
    without_v = write_pth(tmp_path / "b.pth",
                          raw_checkpoint("7", shape, seed=9, v7_layer0_v=False))
    convert(with_v, tmp_path / "a.bin")
    convert(without_v, tmp_path / "b.bin")
    keys = [i.key for i in modelfile.list_tensors(tmp_path / "a.bin")]
    assert "blocks.0.att.v0" not in keys and "blocks.1.att.v0" in keys
    assert "blocks.0.att.x_r" not in keys and keys.count("blocks.0.att.x_rwkvag") == 1


def test_safetensors_converts_to_the_same_tensors_as_pth_in_model_order(tmp_path):
    raw = raw_checkpoint("6", Shape(n_layer=3), seed=7)
    convert(write_pth(tmp_path / "m.pth", raw, "BF16"), tmp_path / "a.bin")
    scrambled = OrderedDict(sorted(raw.items()))  # as the safetensors library orders them
    convert(write_safetensors(tmp_path / "m.safetensors", scrambled, "BF16"), tmp_path / "b.bin")
    a, b = modelfile.read_model(tmp_path / "a.bin"), modelfile.read_model(tmp_path / "b.bin")
    assert a[0] == b[0] and a[1].keys() == b[1].keys()
    for key in a[1]:
        np.testing.assert_array_equal(a[1][key], b[1][key])
    keys = [i.key for i in modelfile.list_tensors(tmp_path / "b.bin")]
    layers = [int(k.split(".")[1]) for k in keys if k.startswith("blocks.")]
    assert keys[0] == "emb.weight" and keys[-1] == "head.weight" and layers == sorted(layers)


def test_progress_reports_bytes_up_to_the_total(tmp_path):
    calls = []
    convert(write_pth(tmp_path / "m.pth", raw_checkpoint("5.2")), tmp_path / "m.bin",
            progress=lambda done, total: calls.append((done, total)))
    assert calls[-1][0] == calls[-1][1] > 0
    assert all(a[0] < b[0] for a, b in zip(calls, calls[1:]))


# ----------------------------------------------------------------------------------------------
# Refusals: clear errors, nothing left behind


def _assert_nothing_written(dest: Path) -> None:
    leftovers = [p.name for p in dest.parent.iterdir() if p.name.startswith(dest.name)
                 or p.name.startswith("." + dest.name)]
    assert leftovers == []


def _malicious_pickle(module: str, name: str, argument: str) -> bytes:
    # PROTO 2, GLOBAL module name, MARK, BINUNICODE argument, TUPLE, REDUCE, STOP
    arg = argument.encode()
    return (b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"(X"
            + len(arg).to_bytes(4, "little") + arg + b"tR.")


@pytest.mark.parametrize("module,name", [("os", "system"), ("posix", "system"),
                                         ("builtins", "eval"), ("subprocess", "getoutput")])
def test_pickle_naming_a_code_running_global_is_refused_without_running(tmp_path, module, name):
    marker = tmp_path / "pwned"
    command = f"open({str(marker)!r}, 'w')" if name == "eval" else f"touch {marker}"
    src = write_pth(tmp_path / "evil.pth", {"emb.weight": np.zeros((2, 2), np.float32)},
                    pickled=_malicious_pickle(module, name, command))
    dest = tmp_path / "out.bin"
    with pytest.raises(ConversionError, match=rf"{module}\.{name}"):
        convert(src, dest)
    assert not marker.exists()
    _assert_nothing_written(dest)


def test_truncated_zip_is_refused(tmp_path):
    src = write_pth(tmp_path / "m.pth", raw_checkpoint("5.2"))
    data = src.read_bytes()
    dest = tmp_path / "out.bin"
    for cut in (len(data) // 3, len(data) - 200, len(data) - 10):
        src.write_bytes(data[:cut])
        with pytest.raises(ConversionError, match="truncated"):
            convert(src, dest)
        _assert_nothing_written(dest)


def test_missing_key_is_named(tmp_path):
    raw = raw_checkpoint("5.2", Shape(n_layer=3))
    del raw["blocks.1.att.gate.weight"]
    dest = tmp_path / "out.bin"
    with pytest.raises(ConversionError, match=r"missing key blocks\.1\.att\.gate\.weight"):
        convert(write_pth(tmp_path / "m.pth", raw), dest)
    _assert_nothing_written(dest)


def test_wrong_shape_is_named_with_the_expected_shape(tmp_path):
    raw = raw_checkpoint("6")
    raw["blocks.1.ffn.value.weight"] = raw["blocks.1.ffn.value.weight"][:, :-1]
    dest = tmp_path / "out.bin"
    with pytest.raises(ConversionError, match=r"blocks\.1\.ffn\.value\.weight.*expected \[32, 112\]"):
        convert(write_pth(tmp_path / "m.pth", raw), dest)
    _assert_nothing_written(dest)


def test_unknown_layout_and_non_checkpoints_are_refused(tmp_path):
    dest = tmp_path / "out.bin"
    with pytest.raises(ConversionError, match="unrecognized"):
        convert(write_pth(tmp_path / "m.pth", {"foo.weight": np.ones((2, 2), np.float32)}), dest)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"hello, this is no checkpoint at all")
    with pytest.raises(ConversionError, match="not"):
        convert(junk, dest)
    raw = raw_checkpoint("4")
    raw["blocks.0.att.extra"] = np.ones(32, np.float32)
    with pytest.raises(ConversionError, match=r"blocks\.0\.att\.extra"):
        convert(write_pth(tmp_path / "x.pth", raw), dest)
    _assert_nothing_written(dest)


def test_interrupted_conversion_leaves_no_file(tmp_path):
    def interrupt(done, total):
        if done > total // 2:
            raise KeyboardInterrupt

    dest = tmp_path / "out.bin"
    with pytest.raises(KeyboardInterrupt):
        convert(write_pth(tmp_path / "m.pth", raw_checkpoint("7")), dest, progress=interrupt)
    _assert_nothing_written(dest)


def test_unsupported_output_type_is_refused(tmp_path):
    with pytest.raises(ConversionError, match="quantize"):
        convert(write_pth(tmp_path / "m.pth", raw_checkpoint("4")), tmp_path / "o.bin", "Q5_1")


# ----------------------------------------------------------------------------------------------
# Quantization


def test_quantize_writes_through_a_temporary_file(tmp_path):
    src = tmp_path / "m.bin"
    convert(write_pth(tmp_path / "m.pth", raw_checkpoint("4", Shape(n_embed=64))), src, "FP16")
    calls = []
    result = quantize(src, tmp_path / "q.bin", "Q5_1", progress=lambda d, t: calls.append((d, t)))
    assert modelfile.read_header(tmp_path / "q.bin").data_type_name == "Q5_1"
    assert result["bytes_after"] < result["bytes_before"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.pth", "q.bin"]
    with pytest.raises(ConversionError, match="already Q5_1"):
        quantize(tmp_path / "q.bin", tmp_path / "qq.bin", "Q4_0")
    with pytest.raises(ConversionError, match="Q4_0"):
        quantize(src, tmp_path / "x.bin", "Q3_K")


# ----------------------------------------------------------------------------------------------
# Real torch.save output: tests/golden/torch-save-v6.pth, written by torch (make_torch_save.py)

TORCH_SAVE_FILE = Path(__file__).resolve().parent / "golden" / "torch-save-v6.pth"


def test_real_torch_save_output_converts_like_our_writer(tmp_path):
    import zipfile

    # torch's own archive: records our writer does not write (.format_version) and the
    # transposed tensor as a strided view.
    names = zipfile.ZipFile(TORCH_SAVE_FILE).namelist()
    assert "torch-save-v6/.format_version" in names and "torch-save-v6/data.pkl" in names
    records = {r.key: r for r in read_pth(TORCH_SAVE_FILE)}
    key = records["blocks.0.att.key.weight"]
    assert key.stride == (1, key.shape[0])
    raw = raw_checkpoint("6", seed=8)
    for record in records.values():  # if this fails, rerun tests/golden/make_torch_save.py
        np.testing.assert_array_equal(read_stored(TORCH_SAVE_FILE, record),
                                      as_stored(raw[record.key], "BF16"), err_msg=record.key)
    convert(TORCH_SAVE_FILE, tmp_path / "a.bin")
    convert(write_pth(tmp_path / "o.pth", raw, "BF16"), tmp_path / "b.bin")
    assert (tmp_path / "a.bin").read_bytes() == (tmp_path / "b.bin").read_bytes()


# ----------------------------------------------------------------------------------------------
# Memory: peak RSS of converting a larger checkpoint (reported, not asserted as a timing)

_RSS_SCRIPT = r"""
import sys


def high_water_mark():  # VmHWM: this process's peak RSS (reset by exec, unlike ru_maxrss)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


from rwkv_cli.formats.convert import convert

before = high_water_mark()
if len(sys.argv) > 1:
    convert(sys.argv[1], sys.argv[2], "FP16")
print(before, high_water_mark())
"""


def peak_rss_of_conversion(src: Path, dest: Path) -> tuple[int, int]:
    """(peak RSS after importing the converter, peak RSS after converting), in bytes."""
    run = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(src), str(dest)],
                         capture_output=True, text=True, check=True)
    before, after = (int(v) for v in run.stdout.split())
    return before, after


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_peak_rss_stays_near_one_slice_not_the_checkpoint(tmp_path):
    shape = Shape(n_layer=2, n_embed=512, n_vocab=16384, head_size=64)
    raw = raw_checkpoint("5.2", shape, seed=2)
    largest = max(v.size for v in raw.values()) * 4  # float32 bytes of the largest tensor
    src = write_pth(tmp_path / "big.pth", raw, "BF16")
    del raw
    before, after = peak_rss_of_conversion(src, tmp_path / "o.bin")
    print(f"\ncheckpoint {src.stat().st_size / 1e6:.1f} MB, largest tensor {largest / 1e6:.1f} MB "
          f"as float32; conversion raised the peak RSS by {(after - before) / 1e6:.1f} MB")
    assert after - before < largest


_NO_TORCH_SCRIPT = r"""
import sys
sys.modules["torch"] = None  # any `import torch` now fails, even where torch is installed
sys.modules["safetensors"] = None
from rwkv_cli.formats.convert import convert
print(convert(sys.argv[1], sys.argv[2])["arch"])
"""


def test_conversion_needs_neither_torch_nor_safetensors(tmp_path):
    src = write_pth(tmp_path / "m.pth", raw_checkpoint("7"), "BF16")
    run = subprocess.run([sys.executable, "-c", _NO_TORCH_SCRIPT, str(src), str(tmp_path / "o.bin")],
                         check=False, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split()[-1] == "7"


# ----------------------------------------------------------------------------------------------
# Hugging Face-format checkpoints: the same file as the authors' .pth of the same weights

HF_CASES = [("7", {}), ("7", {"x_x": True}), ("7", {"shards": 3}), ("6", {}), ("6", {"shards": 2})]


@pytest.mark.parametrize(("arch", "options"), HF_CASES,
                         ids=["v7", "v7-old-x_x", "v7-sharded", "v6", "v6-sharded"])
@pytest.mark.parametrize("data_type", ["FP16", "FP32"])
def test_hf_checkpoint_converts_to_the_file_of_the_pth(tmp_path, arch, options, data_type):
    raw = raw_checkpoint(arch, Shape(n_layer=3), seed=5)
    pth = convert(write_pth(tmp_path / "m.pth", raw, "BF16"), tmp_path / "pth.bin", data_type)
    folder = write_hf_checkpoint(tmp_path / "hf", raw, arch, "BF16", **options)
    hf = convert(folder, tmp_path / "hf.bin", data_type)
    assert (tmp_path / "hf.bin").read_bytes() == (tmp_path / "pth.bin").read_bytes()
    assert hf == {**pth, "bytes": pth["bytes"]}


def test_hf_checkpoint_with_unknown_tensor_or_model_is_refused(tmp_path):
    raw = raw_checkpoint("7", Shape(n_layer=2), seed=5)
    folder = write_hf_checkpoint(tmp_path / "hf", raw, "7")
    tensors = hf_tensors(raw, "7")
    tensors["model.layers.0.attn.mystery"] = np.zeros(4, np.float32)
    write_safetensors(folder / "model.safetensors", tensors, "BF16")
    with pytest.raises(ConversionError, match="attn.mystery"):
        convert(folder, tmp_path / "a.bin")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "llama",
                                                      "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(ConversionError, match="llama"):
        convert(folder, tmp_path / "a.bin")
    assert not (tmp_path / "a.bin").exists()


def test_hf_shard_missing_is_named(tmp_path):
    folder = write_hf_checkpoint(tmp_path / "hf", raw_checkpoint("6", Shape(n_layer=2)), "6", shards=2)
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ConversionError, match="model-00002-of-00002"):
        convert(folder, tmp_path / "a.bin")


def test_v6_fp16_files_keep_every_time_tensor_in_fp32(tmp_path):
    """As rwkv.cpp's converter: the low-rank time_maa_w1, time_decay_w1/w2 too."""
    convert(write_pth(tmp_path / "m.pth", raw_checkpoint("6", Shape(n_layer=2))), tmp_path / "m.bin")
    types = {i.key: i.data_type_name for i in modelfile.list_tensors(tmp_path / "m.bin")}
    time_keys = [k for k in types if k.rsplit(".", 1)[-1].startswith("time_")]
    assert {"blocks.1.att.time_maa_w1", "blocks.1.att.time_decay_w2"} <= set(time_keys)
    assert {types[k] for k in time_keys} == {"FP32"}
    assert types["blocks.1.att.key.weight"] == "FP16" and types["head.weight"] == "FP16"
