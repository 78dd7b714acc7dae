"""The RWKV class: completions, streaming, stop strings, the state cache, threads and asyncio.

Most tests run a random-weight v4 model with the byte vocabulary (tokenizer "bytes") whose
greedy output is printable ASCII (tests/models.py); the other architectures and vocabularies
run on models of the same kind.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import numpy as np
import pytest

from rwkv_cli import RWKV
from rwkv_cli import engine as native

PROMPT = "\nThe dragon"


class CountingLibrary:
    """The engine with a count of the tokens it evaluated."""

    def __init__(self, library: native.Library):
        self._library = library
        self.tokens = 0

    def __getattr__(self, name):
        return getattr(self._library, name)

    def eval(self, ctx, token, *args):
        self.tokens += 1
        return self._library.eval(ctx, token, *args)

    def eval_sequence(self, ctx, tokens, *args):
        self.tokens += len(tokens)
        return self._library.eval_sequence(ctx, tokens, *args)

    def eval_sequence_in_chunks(self, ctx, tokens, *args):
        self.tokens += len(tokens)
        return self._library.eval_sequence_in_chunks(ctx, tokens, *args)

    def eval_batch(self, ctx, tokens, *args):
        self.tokens += len(tokens)
        return self._library.eval_batch(ctx, tokens, *args)


@pytest.fixture(scope="module")
def v4_path(byte_v4):
    return byte_v4


@pytest.fixture(scope="module")
def model(v4_path):
    with RWKV(v4_path, threads=1, tokenizer="bytes") as loaded:
        yield loaded


@pytest.fixture
def counted(v4_path):
    library = CountingLibrary(native.default_library())
    with RWKV(v4_path, threads=1, tokenizer="bytes", library=library) as loaded:
        yield loaded, library


def cold(v4_path, prompt: str, **kwargs):
    with RWKV(v4_path, threads=1, tokenizer="bytes", state_cache_size=0) as fresh:
        return fresh.completion(prompt, **kwargs)


# ---- loading and information ----


def test_model_information(model, v4_path):
    assert model.arch == "4"
    assert model.data_type == "FP32"
    assert model.n_vocab == 256
    assert model.state_len == model.library.get_state_len(model._loaded.context.pointer)
    assert model.tokenizer.name == "bytes"
    assert model.path == v4_path
    assert model.threads == 1
    assert "native" in model.engine or "rwkv.cpp" in model.engine


def test_auto_tokenizer_for_a_byte_vocabulary(v4_path):
    with RWKV(v4_path, threads=1) as loaded:
        assert loaded.tokenizer.name == "bytes"


def test_completion_before_setup_is_a_clear_error(v4_path):
    unloaded = RWKV(v4_path, threads=1)
    with pytest.raises(RuntimeError, match="setup"):
        unloaded.completion("hi")


def test_free_then_setup_again(v4_path):
    reloadable = RWKV(v4_path, threads=1, tokenizer="bytes")
    first = reloadable.setup().completion(PROMPT, max_tokens=8, temperature=0)
    reloadable.free()
    assert not reloadable.loaded
    with pytest.raises(RuntimeError):
        reloadable.completion(PROMPT)
    second = reloadable.setup().completion(PROMPT, max_tokens=8, temperature=0)
    reloadable.free()
    assert first.completion == second.completion


def test_gpu_offload_without_a_gpu_backend_is_an_error(v4_path):
    for value in (1, "50%"):
        with pytest.raises(ValueError, match="gpu_offload"):
            RWKV(v4_path, threads=1, gpu_offload=value).setup()


def test_missing_model_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such.bin"):
        RWKV(tmp_path / "no-such.bin").setup()


# ---- completions ----


def test_greedy_is_deterministic_and_follows_the_engine_argmax(model, v4_path):
    first = model.completion(PROMPT, max_tokens=40, temperature=0)
    second = model.completion(PROMPT, max_tokens=40, temperature=0)
    assert first.completion == second.completion
    assert first.usage.completionTokens == 40
    assert first.finish_reason == "length"
    # Each token is the argmax of the engine's logits after the prompt and the tokens before it.
    with native.Context.load(v4_path, 1) as context:
        state = np.empty(context.state_len, np.float32)
        logits = np.empty(context.logits_len, np.float32)
        context.eval_sequence(list(PROMPT.encode()), None, state, logits)
        expected = []
        for _ in range(40):
            expected.append(int(np.argmax(logits)))
            context.eval(expected[-1], state, state, logits)
    assert first.tokens == expected
    assert first.completion == bytes(expected).decode()


def test_seeded_sampling_is_reproducible(model):
    kwargs = {"max_tokens": 40, "temperature": 1.0, "top_p": 0.95, "seed": 1234}
    first = model.completion(PROMPT, **kwargs)
    second = model.completion(PROMPT, **kwargs)
    other = model.completion(PROMPT, **{**kwargs, "seed": 99})
    assert first.completion == second.completion
    assert first.completion != other.completion


def test_stop_string_across_token_boundaries(model):
    full = model.completion(PROMPT, max_tokens=40, temperature=0).completion
    stop = full[12:16]  # four bytes, so four tokens
    expected = full[: full.index(stop)]
    chunks = []
    result = model.completion(
        PROMPT, max_tokens=40, temperature=0, stop=["no such text", stop],
        stream_callback=lambda text, so_far: chunks.append((text, so_far)),
    )
    assert result.completion == expected
    assert result.finish_reason == "stop"
    assert "".join(text for text, _ in chunks) == expected
    assert all(so_far == "".join(t for t, _ in chunks[: i + 1]) for i, (_, so_far) in enumerate(chunks))


def test_stream_chunks_concatenate_and_never_split_a_character(model):
    # Multi-byte characters in the prompt and a hot temperature make the byte model emit
    # partial and invalid UTF-8; streaming must still decode exactly like the whole output.
    chunks = []
    result = model.completion(
        "Caf\u00e9 \u4e16\u754c \U0001f409 ", max_tokens=120, temperature=2.5, seed=7,
        stream_callback=lambda text, so_far: chunks.append(text),
    )
    assert all(chunks)
    assert "".join(chunks) == result.completion
    assert result.completion == model.tokenizer.decode(result.tokens)
    assert any(b >= 0x80 for b in result.tokens)


def test_max_tokens_zero_only_caches_the_prompt(counted):
    model, library = counted
    result = model.completion(PROMPT, max_tokens=0)
    assert result.completion == "" and result.usage.completionTokens == 0
    assert result.usage.promptTokens == len(PROMPT.encode())
    assert library.tokens == len(PROMPT.encode())
    again = model.completion(PROMPT, max_tokens=4, temperature=0)
    assert again.usage.promptTokensCached == len(PROMPT.encode())
    assert library.tokens == len(PROMPT.encode()) + 3  # the fourth token is sampled, not fed


def test_result_dict_and_json_have_the_original_keys(model):
    result = model.completion(PROMPT, max_tokens=5, temperature=0)
    data = json.loads(result.to_json())
    assert data == result.to_dict()
    assert set(data["usage"]) == {"promptTokens", "completionTokens", "totalTokens", "promptTokensCached"}
    assert set(data["perf"]) == {
        "promptTime", "completionTime", "totalTime", "timePerPrompt", "timePerCompletion",
        "timePerFullPrompt", "promptPerSecond", "completionPerSecond", "fullPromptPerSecond",
    }
    assert data["completion"] == result.completion and data["prompt"] == PROMPT
    assert result.usage.totalTokens == result.usage.promptTokens + result.usage.completionTokens
    assert result.usage.prompt_tokens == result.usage.promptTokens


def test_perf_figures_exclude_cached_tokens_from_prompt_rates(v4_path):
    # A model of its own: the shared one may have cached more of this prompt already.
    with RWKV(v4_path, threads=1, tokenizer="bytes") as fresh:
        fresh.preload_prompt(PROMPT)
        result = fresh.completion(PROMPT + " flew", max_tokens=3, temperature=0)
    usage, perf = result.usage, result.perf
    evaluated = usage.promptTokens - usage.promptTokensCached
    assert usage.promptTokensCached == len(PROMPT.encode())
    assert perf.timePerPrompt == pytest.approx(perf.promptTime / evaluated)
    assert perf.timePerFullPrompt == pytest.approx(perf.promptTime / usage.promptTokens)
    assert perf.fullPromptPerSecond > perf.promptPerSecond
    assert perf.totalTime == pytest.approx(perf.promptTime + perf.completionTime)


# ---- the state cache ----


def test_cache_hit_gives_the_cold_output_with_fewer_tokens(counted, v4_path):
    model, library = counted
    prefix = "\nOnce upon a time, in a land far away,"
    prompt = prefix + " there lived"
    reference = cold(v4_path, prompt, max_tokens=30, temperature=0)
    model.preload_prompt(prefix)
    library.tokens = 0
    warm = model.completion(prompt, max_tokens=30, temperature=0)
    assert warm.completion == reference.completion
    assert warm.usage.promptTokensCached == len(prefix.encode())
    assert library.tokens == len(" there lived") + 29


def test_a_resent_chat_history_only_pays_for_the_new_turn(counted):
    model, _library = counted
    first = model.completion("\nUser: hello\nBot:", max_tokens=20, temperature=0)
    history = first.prompt + first.completion + "\nUser: and then?\nBot:"
    second = model.completion(history, max_tokens=5, temperature=0)
    # Everything fed during the first completion is reused: all but its last sampled token.
    assert second.usage.promptTokensCached == first.usage.promptTokens + 19


def test_pinned_prefix_survives_eviction_pressure(v4_path):
    with RWKV(v4_path, threads=1, tokenizer="bytes", state_cache_size=2) as small:
        small.preload_prompt("\nSystem: be brief.", pin=True)
        for i in range(6):
            small.completion(f"\nOther prompt {i}", max_tokens=2, temperature=0)
        result = small.completion("\nSystem: be brief.\nUser:", max_tokens=2, temperature=0)
        assert result.usage.promptTokensCached == len("\nSystem: be brief.")
        assert len(small.state_cache) == 2


def test_unpinned_prefix_is_evicted(v4_path):
    with RWKV(v4_path, threads=1, tokenizer="bytes", state_cache_size=2) as small:
        small.preload_prompt("\nSystem: be brief.")
        for i in range(6):
            small.completion(f"\nOther prompt {i}", max_tokens=2, temperature=0)
        result = small.completion("\nSystem: be brief.\nUser:", max_tokens=2, temperature=0)
        assert result.usage.promptTokensCached == 0


def test_preload_needs_the_cache(v4_path):
    with RWKV(v4_path, threads=1, tokenizer="bytes", state_cache_size=0) as uncached:  # noqa: SIM117
        with pytest.raises(ValueError, match="state cache"):
            uncached.preload_prompt("hello")


# ---- state access ----


def test_init_state_round_trip(model, v4_path):
    state = model.get_state("\nThe dragon flew")
    assert state.dtype == np.float32 and state.shape == (model.state_len,)
    continued = model.completion(" over", init_state=state, max_tokens=20, temperature=0)
    whole = cold(v4_path, "\nThe dragon flew over", max_tokens=20, temperature=0)
    assert continued.completion == whole.completion
    assert continued.usage.promptTokensCached == 0


def test_get_state_equals_the_state_of_a_prompt_only_completion(model):
    state = model.get_state(PROMPT)
    result = model.completion(PROMPT, max_tokens=0)
    assert np.array_equal(state, result.state)
    assert not np.array_equal(state, model.get_state(PROMPT + "!"))


def test_result_state_holds_the_prompt_and_the_fed_tokens(model, v4_path):
    result = model.completion(PROMPT, max_tokens=12, temperature=0)
    assert result.fed_tokens == len(result.tokens) - 1 == 11
    fed_text = model.tokenizer.decode(result.tokens[: result.fed_tokens])
    with RWKV(v4_path, threads=1, tokenizer="bytes", state_cache_size=0) as fresh:
        expected = fresh.get_state(PROMPT + fed_text)
    assert np.allclose(result.state, expected, atol=1e-5)


def test_result_state_is_a_copy(model):
    first = model.completion(PROMPT, max_tokens=3, temperature=0)
    kept = first.state.copy()
    model.completion("something else entirely", max_tokens=3, temperature=0)
    assert np.array_equal(first.state, kept)


# ---- stopping ----


def test_should_stop_ends_the_completion_with_a_result(model):
    seen = []
    result = model.completion(
        PROMPT, max_tokens=50, temperature=0,
        stream_callback=lambda text, so_far: seen.append(text),
        should_stop=lambda: len(seen) >= 5,
    )
    assert result.finish_reason == "cancelled"
    assert result.usage.completionTokens == 5
    assert result.fed_tokens == 5
    assert result.completion == "".join(seen)


def test_stop_event_from_the_stream_callback(model):
    event = threading.Event()
    result = model.completion(
        PROMPT, max_tokens=50, temperature=0, stop_event=event,
        stream_callback=lambda text, so_far: event.set() if len(so_far) >= 3 else None,
    )
    assert result.finish_reason == "cancelled"
    assert len(result.completion) == 3


# ---- concurrency ----


def test_threads_sharing_a_batch_of_two_give_the_serial_outputs(v4_path):
    prompts = [f"\nStory {i}: the" for i in range(32)]
    with RWKV(v4_path, threads=1, tokenizer="bytes", state_cache_size=0) as serial_model:
        serial = [serial_model.completion(p, max_tokens=12, temperature=0).completion for p in prompts]
    results = [None] * len(prompts)
    with RWKV(v4_path, threads=1, tokenizer="bytes", concurrent=2) as shared:
        def work(thread: int) -> None:
            for i in range(thread, len(prompts), 4):
                results[i] = shared.completion(prompts[i], max_tokens=12, temperature=0).completion

        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert shared.active_work_count() == 0 and shared.pending_work_count() == 0
    assert results == serial


def test_work_counts_while_a_completion_waits(v4_path):
    release = threading.Event()
    with RWKV(v4_path, threads=1, tokenizer="bytes", concurrent=1) as single:
        first = threading.Thread(
            target=single.completion, args=(PROMPT,),
            kwargs={"max_tokens": 3, "stream_callback": lambda t, s: release.wait(10)},
        )
        second = threading.Thread(target=single.completion, args=(PROMPT,), kwargs={"max_tokens": 3})
        first.start()
        deadline = time.monotonic() + 10
        while single.active_work_count() < 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        second.start()
        while single.pending_work_count() < 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert (single.active_work_count(), single.pending_work_count()) == (1, 1)
        release.set()
        first.join()
        second.join()
        assert (single.active_work_count(), single.pending_work_count()) == (0, 0)


def test_acompletion_under_asyncio_gather(v4_path):
    prompts = [f"\nTale {i}:" for i in range(6)]
    with RWKV(v4_path, threads=1, tokenizer="bytes", concurrent=2) as shared:
        serial = [shared.completion(p, max_tokens=10, temperature=0).completion for p in prompts]
        shared.clear_cache()

        async def run_all():
            return await asyncio.gather(
                *(shared.acompletion(p, max_tokens=10, temperature=0) for p in prompts)
            )

        results = asyncio.run(run_all())
    assert [r.completion for r in results] == serial


def test_cancelling_acompletion_stops_the_work(v4_path):
    with RWKV(v4_path, threads=1, tokenizer="bytes") as single:
        started = threading.Event()

        async def cancel_midway():
            task = asyncio.ensure_future(
                single.acompletion(
                    PROMPT, max_tokens=100_000, temperature=0,
                    stream_callback=lambda text, so_far: started.set(),
                )
            )
            while not started.is_set():
                await asyncio.sleep(0.001)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(cancel_midway())
        # The cancelled await returned once the work had stopped.
        assert single.active_work_count() == 0
        # Its place in the batch is free again for the next completion.
        assert single.completion(PROMPT, max_tokens=2, temperature=0).usage.completionTokens == 2


# ---- bad options ----


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_tokens": -1}, "max_tokens"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.01}, "top_p"),
        ({"temperature": -1}, "temperature"),
        ({"top_k": -3}, "top_k"),
        ({"stop": [""]}, "stop"),
        ({"seed": "x"}, "seed"),
        ({"prompt": ""}, "empty"),
        ({"init_state": np.zeros(7, np.float32)}, "init_state has 7 values"),
        ({"prompt": "", "init_state": "model-state", "max_tokens": 1}, "init_state"),
    ],
)
def test_bad_completion_options_raise_value_error(model, kwargs, message):
    kwargs = {"prompt": PROMPT, **kwargs}
    if isinstance(kwargs.get("init_state"), str):
        kwargs["init_state"] = np.zeros(model.state_len, np.float32)
    with pytest.raises(ValueError, match=message):
        model.completion(**kwargs)


def test_empty_prompt_with_a_state_only_returns_the_state(model):
    state = model.get_state(PROMPT)
    result = model.completion("", init_state=state, max_tokens=0)
    assert np.array_equal(result.state, state)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"tokenizer": "gpt2"}, "unknown tokenizer"),
        ({"threads": 0}, "threads"),
        ({"concurrent": 0}, "concurrent"),
        ({"batch_size": 0}, "batch_size"),
        ({"state_cache_size": -5}, "state_cache_size"),
        ({"gpu_offload": "lots"}, "gpu_offload"),
        ({"gpu_offload": -1}, "gpu_offload"),
    ],
)
def test_bad_constructor_options_raise_value_error(v4_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        RWKV(v4_path, **kwargs)


# ---- other vocabularies (random-weight models written by the tests) ----


@pytest.fixture(scope="module")
def neox_shaped_model(tmp_path_factory):
    """A model with the 20B vocabulary's size (50277), so "auto" asks for the 20B tokenizer."""
    from rwkv_cli.formats.synthetic import write_random_model

    path = tmp_path_factory.mktemp("neox") / "v4-20b.bin"
    return write_random_model(path, "4", 1, 32, 50277, "FP16")


def test_world_vocabulary_model(world_v7):
    with RWKV(world_v7, threads=1) as world:
        assert world.tokenizer.name == "world"
        chunks = []
        result = world.completion(
            "Hello 世界", max_tokens=24, temperature=1.0, seed=3,
            stream_callback=lambda text, so_far: chunks.append(text),
        )
        tokenizer = world.tokenizer
    assert result.usage.promptTokens == len(tokenizer.encode("Hello 世界")) < len("Hello 世界")
    assert result.finish_reason == "length" and len(result.tokens) == 24
    assert "".join(chunks) == result.completion == tokenizer.decode(result.tokens)


def test_20b_vocabulary_model_finds_the_tokenizer_in_rwkv_home(
    neox_shaped_model, bpe_tokenizer_json, tmp_path, monkeypatch
):
    """A tiny BPE file stands in for the 20B one (the real file: test_shared_tokenizer_20b.py);
    sampling keeps to its few hundred ids, the first of the model's 50277."""
    from rwkv_cli.core.tokenizer import HFTokenizer

    monkeypatch.setenv("RWKV_HOME", str(tmp_path))
    (tmp_path / "20B_tokenizer.json").symlink_to(bpe_tokenizer_json)
    prompt = "The dragon flew over the hills"
    with RWKV(neox_shaped_model, threads=1) as neox:
        assert neox.tokenizer.name == "20B"
        result = neox.completion(prompt, max_tokens=8, temperature=1.0, seed=2)
    bpe = HFTokenizer(bpe_tokenizer_json)
    assert result.usage.promptTokens == len(bpe.encode(prompt)) < len(prompt)
    assert len(result.tokens) == 8 and max(result.tokens) < bpe.vocab_size
    assert result.completion == bpe.decode(result.tokens)


def test_20b_vocabulary_model_without_the_tokenizer(neox_shaped_model, tmp_path, monkeypatch):
    monkeypatch.setenv("RWKV_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="20B_tokenizer.json"):
        RWKV(neox_shaped_model, threads=1).setup()


# ---- every architecture ----


@pytest.mark.parametrize(
    "arch, dtype", [("5.1", "FP32"), ("5.2", "FP32"), ("6", "Q5_1"), ("7", "FP32")]
)
def test_cache_and_init_state_on_every_architecture(byte_model, arch, dtype):
    path = byte_model(arch, dtype)
    prefix, suffix = "\nThe dragon", " flew over the"
    with RWKV(path, threads=1, tokenizer="bytes", state_cache_size=0) as fresh:
        reference = fresh.completion(prefix + suffix, max_tokens=16, temperature=0)
        state = fresh.get_state(prefix)
        continued = fresh.completion(suffix, init_state=state, max_tokens=16, temperature=0)
    assert continued.completion == reference.completion
    with RWKV(path, threads=1, tokenizer="bytes") as cached:
        cached.preload_prompt(prefix)
        warm = cached.completion(prefix + suffix, max_tokens=16, temperature=0)
    assert warm.usage.promptTokensCached == len(prefix)
    assert warm.completion == reference.completion


# ---- streaming and stop strings, scripted ----


class ScriptedLibrary:
    """A stand-in engine whose logits always point at the next byte of a script, so the
    completion is known in advance: the streaming and stop logic can be checked exactly."""

    name = "scripted"
    has_eval_batch = False  # one eval per sequence: the position below is the context's

    def __init__(self, script: bytes):
        self.script = script
        self.position = {}

    def init_from_file(self, path, n_threads, n_gpu_layers=0):
        return "ctx"

    def clone_context(self, ctx, n_threads):
        return "clone"

    def free(self, ctx):
        pass

    def gpu_offload_layers(self, ctx, n_layers):
        raise native.RWKVError("no GPU")

    def get_n_vocab(self, ctx):
        return 256

    get_logits_len = get_n_vocab

    def get_n_layer(self, ctx):
        return 1

    def get_n_embed(self, ctx):
        return 4

    def get_state_len(self, ctx):
        return 4

    def get_arch_version(self, ctx):
        return "4"

    def get_data_type_name(self, ctx):
        return "FP32"

    def get_head_type_name(self, ctx):
        return "FP32"

    def get_kernel_path(self, ctx):
        return "scalar"

    def _next(self, ctx, state_out, logits_out):
        index = self.position.get(ctx, 0)
        self.position[ctx] = index + 1
        state_out[:] = index
        if logits_out is not None:
            logits_out[:] = 0
            logits_out[self.script[index % len(self.script)]] = 1

    def eval_sequence_in_chunks(self, ctx, tokens, chunk_size, state_in, state_out, logits_out):
        self.position[ctx] = 0
        self._next(ctx, state_out, logits_out)

    def eval(self, ctx, token, state_in, state_out, logits_out):
        self._next(ctx, state_out, logits_out)


def scripted(v4_path, script: bytes, tokenizer="bytes") -> RWKV:
    return RWKV(v4_path, tokenizer=tokenizer, state_cache_size=0, library=ScriptedLibrary(script))


def run_scripted(v4_path, script: bytes, **kwargs):
    chunks = []
    with scripted(v4_path, script, kwargs.pop("tokenizer", "bytes")) as fake:
        result = fake.completion(
            "prompt", temperature=0, stream_callback=lambda text, so_far: chunks.append(text), **kwargs
        )
    assert "".join(chunks) == result.completion
    return result, chunks


def test_scripted_stop_string_is_cut_and_never_streamed(v4_path):
    result, chunks = run_scripted(v4_path, b"hello world!", max_tokens=20, stop="world")
    assert result.completion == "hello "
    assert result.finish_reason == "stop"
    assert not any("w" in c for c in chunks)
    assert result.usage.completionTokens == len("hello world")


def test_scripted_false_start_of_a_stop_string_is_released(v4_path):
    result, chunks = run_scripted(v4_path, b"abx abc", max_tokens=20, stop=["abc"])
    assert result.completion == "abx "
    assert chunks[0] == "abx"  # "a", "ab" were held back until "x" ruled the stop out


def test_scripted_earliest_of_several_stop_strings_wins(v4_path):
    result, _ = run_scripted(v4_path, b"one two three", max_tokens=20, stop=["three", "two"])
    assert result.completion == "one "


def test_scripted_held_back_text_is_released_at_the_end(v4_path):
    result, chunks = run_scripted(v4_path, b"the end", max_tokens=7, stop=["end!"])
    assert result.completion == "the end"
    assert result.finish_reason == "length"
    assert chunks[-1].endswith("end")


def test_scripted_multibyte_characters_arrive_whole(v4_path):
    text = "é€🐉 ok"
    result, chunks = run_scripted(v4_path, text.encode(), max_tokens=len(text.encode()))
    assert result.completion == text
    assert chunks[:3] == ["é", "€", "🐉"]


def test_scripted_invalid_utf8_becomes_replacement_characters(v4_path):
    result, _ = run_scripted(v4_path, b"a\xffb", max_tokens=3)
    assert result.completion == "a\ufffdb"


def test_scripted_unfinished_character_at_the_end_is_replaced(v4_path):
    result, _ = run_scripted(v4_path, "a€".encode()[:3], max_tokens=3)
    assert result.completion == "a\ufffd"


def test_scripted_end_of_text_token_ends_the_completion(v4_path):
    from rwkv_cli.core.tokenizer import BytesTokenizer

    class BytesWithEnd(BytesTokenizer):
        eos_token = 0

    result, _ = run_scripted(v4_path, b"hi\x00more", max_tokens=20, tokenizer=BytesWithEnd())
    assert result.completion == "hi"
    assert result.finish_reason == "eos"
    assert result.tokens == [104, 105, 0]
    assert result.fed_tokens == 2


# ---- streaming as an iterator ----


def test_stream_iterator_gives_the_plain_completion_in_pieces(model):
    kwargs = {"max_tokens": 40, "temperature": 1.0, "top_p": 0.9, "seed": 5, "stop": ["xq"]}
    plain = model.completion(PROMPT, **kwargs)
    chunks = list(model.completion(PROMPT, stream=True, **kwargs))
    *pieces, last = chunks
    assert pieces and all(chunk.text for chunk in pieces)
    assert "".join(chunk.text for chunk in pieces) == plain.completion
    assert all(chunk.completion == "".join(c.text for c in pieces[: i + 1]) for i, chunk in enumerate(pieces))
    counts = [chunk.usage.completionTokens for chunk in pieces]
    assert counts == sorted(counts) and all(chunk.finish_reason is None for chunk in pieces)
    assert last.text == "" and last.finish_reason == plain.finish_reason
    assert last.result.completion == plain.completion and last.result.tokens == plain.tokens
    assert last.usage == last.result.usage and last.usage.promptTokens == plain.usage.promptTokens


def test_stream_options_are_checked_when_the_stream_is_made(model):
    with pytest.raises(ValueError, match="top_p"):
        model.completion(PROMPT, top_p=0, stream=True)
    with pytest.raises(ValueError, match="stream_callback"):
        model.completion(PROMPT, stream=True, stream_callback=lambda text, so_far: None)


@pytest.mark.parametrize("how", ["close", "drop"])
def test_leaving_a_stream_early_frees_its_place_for_the_next_completion(v4_path, how):
    with RWKV(v4_path, threads=1, tokenizer="bytes", concurrent=1) as single:
        stream = single.completion(PROMPT, max_tokens=100_000, temperature=0, stream=True)
        first = [next(stream).text for _ in range(3)]
        assert len(first) == 3 and single.active_work_count() == 1
        if how == "close":
            stream.close()
        else:
            del stream
        assert single.active_work_count() == 0
        after = single.completion(PROMPT, max_tokens=3, temperature=0)
        assert after.usage.completionTokens == 3


def test_free_closes_an_open_stream(v4_path):
    single = RWKV(v4_path, threads=1, tokenizer="bytes").setup()
    stream = single.completion(PROMPT, max_tokens=100_000, temperature=0, stream=True)
    next(stream)
    single.free()
    assert not single.loaded
    assert list(stream) == []


def test_async_stream_gives_the_plain_completion_in_pieces(v4_path):
    with RWKV(v4_path, threads=1, tokenizer="bytes", concurrent=2) as shared:
        kwargs = {"max_tokens": 30, "temperature": 1.0, "top_p": 0.9, "seed": 11}
        plain = shared.completion(PROMPT, **kwargs)

        async def read_all():
            stream = await shared.acompletion(PROMPT, stream=True, **kwargs)
            return [chunk async for chunk in stream]

        *pieces, last = asyncio.run(read_all())
    assert "".join(chunk.text for chunk in pieces) == plain.completion
    assert last.result.completion == plain.completion and last.finish_reason == plain.finish_reason


@pytest.mark.parametrize("how", ["aclose", "drop"])
def test_leaving_an_async_stream_early_frees_its_place(v4_path, how):
    with RWKV(v4_path, threads=1, tokenizer="bytes", concurrent=1) as single:

        async def read_some_then_leave():
            stream = await single.acompletion(PROMPT, max_tokens=100_000, temperature=0, stream=True)
            seen = []
            async for chunk in stream:
                seen.append(chunk.text)
                if len(seen) == 3:
                    break
            if how == "aclose":
                await stream.aclose()
                assert single.active_work_count() == 0
            else:
                del stream  # asyncio closes an abandoned async generator for us
            # With one place, this completion runs only once the stream gave it back.
            after = await asyncio.wait_for(
                single.acompletion(PROMPT, max_tokens=3, temperature=0), timeout=30
            )
            return seen, after

        seen, after = asyncio.run(read_some_then_leave())
        assert single.active_work_count() == 0
    assert len(seen) == 3
    assert after.usage.completionTokens == 3 and after.finish_reason == "length"


def test_async_stream_options_are_checked_at_the_await(model):
    async def bad():
        await model.acompletion(PROMPT, top_k=-1, stream=True)

    with pytest.raises(ValueError, match="top_k"):
        asyncio.run(bad())
