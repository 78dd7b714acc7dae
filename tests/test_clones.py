"""Cloned contexts share one copy of the weights and run in parallel without interference."""

from __future__ import annotations

import threading

import numpy as np
import psutil
import pytest
from engine_utils import run_sequence, run_serial

from rwkv_cli import engine as native
from rwkv_cli.formats.synthetic import write_random_model


@pytest.fixture(scope="module")
def lib() -> native.Library:
    return native.default_library()


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    # ~50 MB of FP32 weights: large enough that a copy per clone would show in RSS
    path = tmp_path_factory.mktemp("clones") / "v4-4x512.bin"
    return write_random_model(path, "4", 4, 512, 8000, data_type="FP32", seed=11)


def test_clone_gives_identical_logits(lib, model_path):
    ctx = lib.init_from_file(model_path, 1)
    clone = lib.clone_context(ctx, 2)
    try:
        tokens = [1, 2, 3, 4000, 7999]
        a, sa = run_serial(lib, ctx, tokens)
        b, sb = run_serial(lib, clone, tokens)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(sa, sb)
        assert lib.get_state_len(clone) == lib.get_state_len(ctx)
    finally:
        lib.free(ctx)
    # the clone keeps the shared weights alive after the first context is freed
    c, _ = run_serial(lib, clone, tokens)
    lib.free(clone)
    np.testing.assert_array_equal(a, c)


def test_clones_run_in_parallel_threads_without_interference(lib, model_path):
    ctx = lib.init_from_file(model_path, 1)
    clones = [lib.clone_context(ctx, 1) for _ in range(3)]
    contexts = [ctx] + clones
    prompts = [[i, i + 1, i + 2, i * 7 % 8000] * 5 for i in range(len(contexts))]
    expected = [run_sequence(lib, ctx, p)[0] for p in prompts]
    results: dict[int, list[np.ndarray]] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            results[i] = [run_serial(lib, contexts[i], prompts[i])[0] for _ in range(3)]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(contexts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in contexts:
        lib.free(c)
    assert not errors
    for i, runs in results.items():
        for logits in runs:
            np.testing.assert_allclose(logits, expected[i], atol=1e-5, rtol=1e-5)


def test_clones_add_far_less_memory_than_the_weights(lib, model_path):
    weights = model_path.stat().st_size
    process = psutil.Process()
    ctx = lib.init_from_file(model_path, 1)
    state = np.empty(lib.get_state_len(ctx), np.float32)
    logits = np.empty(lib.get_logits_len(ctx), np.float32)
    lib.eval(ctx, 1, None, state, logits)  # touch every weight page once
    before = process.memory_info().rss
    clones = [lib.clone_context(ctx, 1) for _ in range(4)]
    for c in clones:
        lib.eval(c, 1, None, state, logits)
    grown = process.memory_info().rss - before
    for c in clones + [ctx]:
        lib.free(c)
    assert grown < 0.1 * weights * len(clones), (grown, weights)
