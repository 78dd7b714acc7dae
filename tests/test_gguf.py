"""GGUF files (RWKV-6 and RWKV-7 as llama.cpp lays them out) through the engine: every tensor
type against the NumPy reference run on the values the file holds (read back by the `gguf`
package, an independent reader), against the same weights loaded from our rwkv.cpp file, states
moving between the two, and llama.cpp's layout variants (fused or separate mixes, squeezed or
{C, 1, 1} vectors, rwkv6's residual rescaling, metadata eps, container versions)."""

from __future__ import annotations

import numpy as np
import pytest
from engine_utils import run_sequence, run_serial
from gguf_writer import write_rwkv_gguf
from reference import Reference

from rwkv_cli import engine as native
from rwkv_cli.formats.synthetic import random_tensors, write_random_model

N_LAYER, N_EMBED, HEAD_SIZE, N_VOCAB = 2, 256, 64, 300
FFN_DIM = 1024  # rows of 256 everywhere: every K-quant fits (v6's default would be 896)
PROMPT = [5, 299, 17, 3, 256, 42, 7, 100, 1, 2, 140, 0]
FLOAT_TYPES = ("F32", "F16", "BF16")
BLOCK_TYPES = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
ENGINE_NAME = {"F32": "FP32", "F16": "FP16"}


@pytest.fixture(scope="module")
def lib() -> native.Library:
    return native.default_library()


def tensors(arch: str, seed: int = 3, n_layer: int = N_LAYER):
    return list(random_tensors(arch, n_layer, N_EMBED, N_VOCAB, HEAD_SIZE, FFN_DIM, seed=seed))


def evaluate(lib, path, tokens, state=None, threads=2):
    ctx = lib.init_from_file(path, threads)
    try:
        serial = run_serial(lib, ctx, tokens, state)
        sequence = run_sequence(lib, ctx, tokens, state)
        name = lib.get_data_type_name(ctx)
    finally:
        lib.free(ctx)
    return serial, sequence, name


def reference_of(written, arch, n_layer=N_LAYER, **kw) -> Reference:
    return Reference(written.values, n_layer, N_EMBED, N_VOCAB, arch=arch, **kw)


@pytest.mark.parametrize("kind", FLOAT_TYPES + BLOCK_TYPES)
@pytest.mark.parametrize("arch", ["6", "7"])
def test_every_type_follows_the_reference(lib, tmp_path, arch, kind):
    written = write_rwkv_gguf(tmp_path / "m.gguf", arch, tensors(arch), N_LAYER, N_EMBED, HEAD_SIZE,
                              kind=kind)
    want, want_state = reference_of(written, arch).forward_sequence(PROMPT)
    (serial, serial_state), (sequence, sequence_state), name = evaluate(lib, written.path, PROMPT)
    assert name == ENGINE_NAME.get(kind, kind)
    scale = np.abs(want).max()
    if kind in FLOAT_TYPES:  # the reference has the exact weights: only float rounding differs
        tol, state_tol = 1e-5 * scale, 1e-5 * np.abs(want_state).max() + 1e-5
    else:  # products meet int8 activations (per 32 values) on every kernel path
        tol, state_tol = 0.05 * scale, 0.05 * np.abs(want_state).max()
    for logits, state in ((serial, serial_state), (sequence, sequence_state)):
        assert np.max(np.abs(logits - want)) < tol
        assert np.max(np.abs(state - want_state)) < state_tol
    # and far from the reference of unquantized weights for the coarse types is still close:
    # a misread block layout would be off by the size of the logits themselves
    assert np.corrcoef(serial, want)[0, 1] > 0.99


@pytest.mark.parametrize("arch", ["6", "7"])
def test_same_weights_as_our_rwkv_cpp_file(lib, tmp_path, arch):
    source = tensors(arch)
    gguf_path = write_rwkv_gguf(tmp_path / "m.gguf", arch, source, N_LAYER, N_EMBED, HEAD_SIZE).path
    bin_path = write_random_model(tmp_path / "m.bin", arch, N_LAYER, N_EMBED, N_VOCAB,
                                  head_size=HEAD_SIZE, ffn_dim=FFN_DIM, seed=3)
    (g_logits, g_state), _, _ = evaluate(lib, gguf_path, PROMPT)
    (b_logits, b_state), _, _ = evaluate(lib, bin_path, PROMPT)
    np.testing.assert_allclose(g_logits, b_logits, rtol=0, atol=1e-5 * np.abs(b_logits).max())
    np.testing.assert_allclose(g_state, b_state, rtol=0, atol=1e-5 * np.abs(b_state).max())
    # states move between the two files: same length and layout
    more = [9, 8, 7, 6]
    (g_more, _), _, _ = evaluate(lib, gguf_path, more, state=b_state)
    (b_more, _), _, _ = evaluate(lib, bin_path, more, state=g_state)
    np.testing.assert_allclose(g_more, b_more, rtol=0, atol=1e-5 * np.abs(b_more).max())


@pytest.mark.parametrize("every", [1, 2])
def test_rwkv6_rescaled_files_halve_the_residual_stream(lib, tmp_path, every):
    """llama.cpp's converter divides block b's output and value matrices by 2^(b // R); its
    graph halves the residual stream after every R-th block. Both together give the model's
    logits back, up to the layer norms' eps."""
    n_layer = 4
    source = tensors("6", n_layer=n_layer)
    written = write_rwkv_gguf(tmp_path / "m.gguf", "6", source, n_layer, N_EMBED, HEAD_SIZE,
                              rescale_every=every)
    want, want_state = reference_of(written, "6", n_layer, rescale_every=every).forward_sequence(PROMPT)
    (serial, state), (sequence, _), _ = evaluate(lib, written.path, PROMPT)
    scale = np.abs(want).max()
    assert np.max(np.abs(serial - want)) < 1e-5 * scale
    assert np.max(np.abs(sequence - want)) < 1e-5 * scale
    np.testing.assert_allclose(state, want_state, rtol=0, atol=1e-5 * np.abs(want_state).max() + 1e-5)
    # without the halving the same weights are a different model
    unhalved, _ = reference_of(written, "6", n_layer).forward_sequence(PROMPT)
    assert np.max(np.abs(unhalved - want)) > 100 * np.max(np.abs(serial - want))
    # the original, unscaled model: the same logits up to the eps of the norms
    plain = Reference(dict(source), n_layer, N_EMBED, N_VOCAB, arch="6").forward_sequence(PROMPT)[0]
    assert np.max(np.abs(plain - serial)) < 1e-2 * scale


@pytest.mark.parametrize(
    "arch,variant",
    [("6", {"v6_fused_mixes": False}), ("6", {"squeeze_vectors": False}),
     ("7", {"squeeze_vectors": False}), ("7", {"layer0_value_lora": True}),
     ("7", {"version": 2}), ("6", {"version": 2}), ("7", {"alignment": 64}),
     ("6", {"alignment": 8})],
    ids=["v6-separate-mixes", "v6-3d-vectors", "v7-3d-vectors", "v7-layer0-value-lora",
         "v7-gguf-v2", "v6-gguf-v2", "v7-align-64", "v6-align-8"],
)
def test_layout_variants_read_the_same(lib, tmp_path, arch, variant):
    source = tensors(arch)
    plain = write_rwkv_gguf(tmp_path / "plain.gguf", arch, source, N_LAYER, N_EMBED, HEAD_SIZE)
    other = write_rwkv_gguf(tmp_path / "other.gguf", arch, source, N_LAYER, N_EMBED, HEAD_SIZE,
                            **variant)
    (a, a_state), _, _ = evaluate(lib, plain.path, PROMPT)
    (b, b_state), _, _ = evaluate(lib, other.path, PROMPT)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a_state, b_state)


@pytest.mark.parametrize("arch", ["6", "7"])
def test_layer_norm_eps_comes_from_the_metadata(lib, tmp_path, arch):
    eps = 1e-2  # large enough to move the logits visibly
    written = write_rwkv_gguf(
        tmp_path / "m.gguf", arch, tensors(arch), N_LAYER, N_EMBED, HEAD_SIZE,
        metadata={f"rwkv{arch}.attention.layer_norm_epsilon": eps,
                  f"rwkv{arch}.attention.group_norm_epsilon": 0.5},
    )
    want, _ = reference_of(written, arch, ln_eps=eps, ln_x_eps=0.5).forward_sequence(PROMPT)
    default, _ = reference_of(written, arch).forward_sequence(PROMPT)
    (got, _), _, _ = evaluate(lib, written.path, PROMPT)
    scale = np.abs(want).max()
    assert np.max(np.abs(got - want)) < 1e-5 * scale
    assert np.max(np.abs(default - want)) > 1e-3 * scale


@pytest.mark.parametrize("file_type,label", [(15, "Q4_K_M"), (17, "Q5_K_M"), (7, "Q8_0"), (1, "FP16")])
def test_data_type_name_is_llama_cpp_file_type(lib, tmp_path, file_type, label):
    written = write_rwkv_gguf(tmp_path / "m.gguf", "7", tensors("7"), N_LAYER, N_EMBED, HEAD_SIZE,
                              kind="Q4_K", file_type=file_type)
    _, _, name = evaluate(lib, written.path, [1])
    assert name == label


def test_mixed_types_in_one_file(lib, tmp_path):
    """Q4_K_M-like: most matrices Q4_K, the FFN's value and the head Q6_K, embedding Q8_0."""

    def kind_of(key, shape):
        if key == "head.weight" or key.endswith("ffn.value.weight"):
            return "Q6_K"
        if key == "emb.weight":
            return "Q8_0"
        return "Q4_K"

    written = write_rwkv_gguf(tmp_path / "m.gguf", "7", tensors("7"), N_LAYER, N_EMBED, HEAD_SIZE,
                              kind_of=kind_of)
    assert set(written.kinds.values()) == {"F32", "Q4_K", "Q6_K", "Q8_0"}
    want, _ = reference_of(written, "7").forward_sequence(PROMPT)
    (serial, _), (sequence, _), name = evaluate(lib, written.path, PROMPT)
    assert name == "Q4_K"
    for logits in (serial, sequence):
        assert np.max(np.abs(logits - want)) < 0.05 * np.abs(want).max()


@pytest.mark.parametrize("kind", ["BF16", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"])
def test_threads_and_kernel_paths_agree(lib, tmp_path, kind, monkeypatch):
    """Thread counts change nothing on a path (rows are split, not sums). Between paths the
    products' float sums run in another order; for block types that moves an activation now
    and then across an int8 rounding boundary (one code of 254 in a block), which then moves
    the logits by about 1% of their spread: the kernel harness (test_kernels.py) bounds each
    product tightly; here a misread layout would be off by about 100%."""
    written = write_rwkv_gguf(tmp_path / "m.gguf", "7", tensors("7"), N_LAYER, N_EMBED, HEAD_SIZE,
                              kind=kind)
    monkeypatch.setenv("RWKV_KERNELS", "scalar")
    (reference, _), _, _ = evaluate(lib, written.path, PROMPT, threads=1)
    info = lib.get_system_info_string()
    paths = info.split("kernels available: ")[1].split(" |")[0].split()
    tolerance = 1e-5 if kind == "BF16" else 2e-2  # relative L2
    for path in paths:
        monkeypatch.setenv("RWKV_KERNELS", path)
        (one, _), (one_seq, _), _ = evaluate(lib, written.path, PROMPT, threads=1)
        (three, _), (three_seq, _), _ = evaluate(lib, written.path, PROMPT, threads=3)
        np.testing.assert_array_equal(one, three)
        np.testing.assert_array_equal(one_seq, three_seq)
        for logits in (one, one_seq):
            assert np.linalg.norm(logits - reference) < tolerance * np.linalg.norm(reference), path
