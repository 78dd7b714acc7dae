"""Continuous batching: concurrent completions share one context and advance together.

`RWKV(path, concurrent=N)` runs up to N completions as N sequences of one batch (one
`rwkv_eval_batch` per step) on one engine context; more wait in a queue. A completion must not
notice: greedy or seeded text is the same alone or in a batch of 16 (FP32 and FP16 weights:
batches of up to 16 are bit-identical to rwkv_eval), cancelling one leaves the others as they
were, stream callbacks run on the caller's thread, free() ends everything with a clear error.

To get a batch of exactly the completions a test starts, the engine is held at its first
prompt (a `HeldLibrary`) until all of them are queued: they then join the batch together.
The scheduler's `step_log` records each step's decode rows and prompt tokens, so progress is
asserted on step counts, never on times. Every wait is bounded: a hang fails.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import threading
import time

import numpy as np
import pytest

from rwkv_cli import RWKV, RWKVError
from rwkv_cli import engine as native

pytestmark = [
    pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning"),
    pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
]

TIMEOUT = 60.0  # seconds for any wait (each takes milliseconds when all is well)
N = 16
# No prompt is a prefix of another: whatever the state cache holds, each prompt is evaluated
# from the same state as alone.
PROMPTS = [f"Story {i}: the dragon" for i in range(N)]
GREEDY = {"max_tokens": 40, "temperature": 0}


def sampled(i: int) -> dict:
    return {"max_tokens": 40, "temperature": 1.0, "top_p": 0.9, "seed": 1000 + i}


class HeldLibrary:
    """The engine, held at its first sequence-mode call (a prompt) until `release` is set, so
    that the completions submitted meanwhile queue up and join the batch at the same step."""

    def __init__(self, library: native.Library | None = None):
        self._library = library or native.default_library()
        self.held = threading.Event()
        self.release = threading.Event()

    def __getattr__(self, name):
        return getattr(self._library, name)

    def eval_sequence_in_chunks(self, *args):
        if not self.release.is_set():
            self.held.set()
            assert self.release.wait(TIMEOUT), "never released"
        return self._library.eval_sequence_in_chunks(*args)


class SerialLibrary:
    """An engine without rwkv_eval_batch (as an rwkv.cpp library): one eval per sequence."""

    has_eval_batch = False

    def __init__(self):
        self._library = native.default_library()
        self.evals = 0

    def __getattr__(self, name):
        return getattr(self._library, name)

    def eval(self, *args):
        self.evals += 1
        return self._library.eval(*args)

    def eval_batch(self, *args):
        raise AssertionError("eval_batch called on a library without it")


class CountingLibrary:
    """The engine, counting the contexts it creates."""

    def __init__(self):
        self._library = native.default_library()
        self.created = collections.Counter()

    def __getattr__(self, name):
        return getattr(self._library, name)

    def init_from_file(self, *args):
        self.created["init_from_file"] += 1
        return self._library.init_from_file(*args)

    def clone_context(self, *args):
        self.created["clone_context"] += 1
        return self._library.clone_context(*args)


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)


def in_threads(calls: list) -> list:
    """Run each call on its own thread; their values (or exceptions), bounded."""
    outcomes: list = [None] * len(calls)

    def run(i):
        try:
            outcomes[i] = calls[i]()
        except BaseException as error:  # noqa: BLE001 - returned to the test
            outcomes[i] = error

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + TIMEOUT
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "completions did not end (a hang)"
    return outcomes


def alone(path, prompt: str, **kwargs):
    """The completion on a fresh one-sequence model without a cache."""
    with RWKV(path, threads=1, concurrent=1, state_cache_size=0) as single:
        return single.completion(prompt, **kwargs)


def held_model(path, concurrent: int = N, **kwargs) -> tuple[RWKV, HeldLibrary]:
    library = HeldLibrary()
    model = RWKV(path, threads=1, concurrent=concurrent, library=library, **kwargs).setup()
    model._loaded.scheduler.step_log = collections.deque()
    return model, library


def all_submitted(model: RWKV, library: HeldLibrary, n: int) -> bool:
    """The engine is held at a prompt, and all n completions are in the batch or queued."""
    return library.held.is_set() and model.active_work_count() + model.pending_work_count() == n


def release_when_submitted(model: RWKV, library: HeldLibrary, n: int) -> None:
    wait_until(lambda: all_submitted(model, library, n), f"{n} submitted completions")
    library.release.set()


def decode_rows(model: RWKV) -> list[int]:
    return [step.decode_rows for step in model._loaded.scheduler.step_log]


@pytest.fixture(params=["FP32", "FP16"])
def float_model(request, byte_model):
    """v7 byte models with float weights: batches of up to 16 are bit-identical to rwkv_eval."""
    return byte_model("7", request.param)


# ---- the same text alone and in a batch ----


@pytest.mark.parametrize("options", [lambda i: GREEDY, sampled], ids=["greedy", "seeded"])
def test_sixteen_threads_each_get_the_text_they_get_alone(float_model, options):
    expected = [alone(float_model, p, **options(i)) for i, p in enumerate(PROMPTS)]
    model, library = held_model(float_model)
    try:
        calls = [lambda i=i: model.completion(PROMPTS[i], **options(i)) for i in range(N)]
        releaser = threading.Thread(target=release_when_submitted, args=(model, library, N))
        releaser.start()
        results = in_threads(calls)
        releaser.join(TIMEOUT)
        assert max(decode_rows(model)) == N  # all sixteen advanced in one call
    finally:
        model.free()
    for result, reference in zip(results, expected):
        assert not isinstance(result, BaseException), result
        assert (result.completion, result.tokens, result.finish_reason) == (
            reference.completion, reference.tokens, reference.finish_reason)
        assert np.array_equal(result.state, reference.state)
        assert result.usage == reference.usage


@pytest.mark.parametrize("options", [lambda i: GREEDY, sampled], ids=["greedy", "seeded"])
def test_sixteen_asyncio_tasks_each_get_the_text_they_get_alone(float_model, options):
    expected = [alone(float_model, p, **options(i)) for i, p in enumerate(PROMPTS)]
    model, library = held_model(float_model)

    async def run_all():
        async def release():
            while not all_submitted(model, library, N):
                await asyncio.sleep(0.002)
            library.release.set()

        releaser = asyncio.ensure_future(release())
        results = await asyncio.gather(
            *(model.acompletion(p, **options(i)) for i, p in enumerate(PROMPTS)))
        await releaser
        return results

    try:
        results = asyncio.run(asyncio.wait_for(run_all(), TIMEOUT))
        assert max(decode_rows(model)) == N
    finally:
        model.free()
    for result, reference in zip(results, expected):
        assert (result.completion, result.tokens, result.finish_reason) == (
            reference.completion, reference.tokens, reference.finish_reason)


def test_streams_read_in_turn_give_their_text_alone(float_model):
    """Sixteen stream iterators read round-robin by one thread, and async streams likewise."""
    expected = [alone(float_model, p, **sampled(i)).completion for i, p in enumerate(PROMPTS)]
    with RWKV(float_model, threads=1, concurrent=N) as model:
        streams = [model.completion(p, stream=True, **sampled(i)) for i, p in enumerate(PROMPTS)]
        texts = [""] * N
        open_streams = dict(enumerate(streams))
        while open_streams:
            for i, stream in list(open_streams.items()):
                chunk = next(stream)
                texts[i] += chunk.text
                if chunk.result is not None:
                    assert chunk.result.completion == texts[i]
                    del open_streams[i]
        assert texts == expected

        async def read_all():
            async def read(i):
                stream = await model.acompletion(PROMPTS[i], stream=True, **sampled(i))
                return "".join([chunk.text async for chunk in stream])

            return await asyncio.gather(*(read(i) for i in range(N)))

        assert asyncio.run(asyncio.wait_for(read_all(), TIMEOUT)) == expected
        assert (model.active_work_count(), model.pending_work_count()) == (0, 0)


def test_batched_completions_use_the_prompt_cache_and_init_states_as_alone(float_model):
    prefix = "A long time ago, in the hills,"
    suffixes = [f" story {i} began" for i in range(8)]

    def run(model: RWKV, parallel: bool) -> list:
        model.preload_prompt(prefix, pin=True)
        state = model.get_state("Once:")
        calls = [lambda s=s: model.completion(prefix + s, **GREEDY) for s in suffixes]
        calls += [lambda s=s: model.completion(s, init_state=state, **GREEDY) for s in suffixes]
        calls += [lambda s=s: model.get_state(prefix + " and " + s) for s in suffixes]
        return in_threads(calls) if parallel else [call() for call in calls]

    with RWKV(float_model, threads=1, concurrent=N) as model:
        batched = run(model, parallel=True)
    with RWKV(float_model, threads=1, concurrent=1) as single:
        serial = run(single, parallel=False)
    n_prefix = len(prefix.encode())
    for result, reference in zip(batched[:8], serial[:8]):
        assert result.completion == reference.completion
        # the pinned prefix came from the cache, looked up when the completion joined the batch
        assert result.usage.promptTokensCached == n_prefix
        assert result.usage == reference.usage
        assert result.perf.promptTime > 0 and result.perf.completionTime > 0
    for result, reference in zip(batched[8:16], serial[8:16]):
        assert result.tokens == reference.tokens and result.usage.promptTokensCached == 0
    for state, reference in zip(batched[16:], serial[16:]):
        assert np.array_equal(state, reference)


# ---- leaving the batch ----


def test_cancelling_one_stream_leaves_the_others_unchanged(byte_v7):
    expected = [alone(byte_v7, p, **GREEDY) for p in PROMPTS[:4]]
    with RWKV(byte_v7, threads=1, concurrent=4) as model:
        model._loaded.scheduler.step_log = collections.deque()
        streams = [model.completion(p, stream=True, **GREEDY) for p in PROMPTS[:4]]
        chunks = [[next(s)] for s in streams]
        for _ in range(4):
            for i, stream in enumerate(streams):
                chunks[i].append(next(stream))
        streams[1].close()  # mid-way
        wait_until(lambda: model.active_work_count() == 3, "the closed stream to leave")
        for i in (0, 2, 3):
            chunks[i].extend(streams[i])
        assert (model.active_work_count(), model.pending_work_count()) == (0, 0)
    for i in (0, 2, 3):
        assert chunks[i][-1].result.completion == expected[i].completion
        assert chunks[i][-1].result.tokens == expected[i].tokens
    assert "".join(c.text for c in chunks[1]) == expected[1].completion[:5]


def test_a_stop_event_or_a_cancelled_task_ends_one_completion_only(byte_v7):
    expected = [alone(byte_v7, p, **GREEDY) for p in PROMPTS[:4]]
    callback_threads = set()
    with RWKV(byte_v7, threads=1, concurrent=4) as model:
        event = threading.Event()

        def stop_after_three(text, so_far):
            callback_threads.add(threading.current_thread())
            if len(so_far) >= 3:
                event.set()

        async def run_all():
            started = asyncio.Event()

            def note(text, so_far):
                if len(so_far) >= 3:
                    started.set()

            stopped = asyncio.ensure_future(model.acompletion(
                PROMPTS[1], stop_event=event, stream_callback=stop_after_three, **GREEDY))
            doomed = asyncio.ensure_future(model.acompletion(
                PROMPTS[2], max_tokens=100_000, temperature=0, stream_callback=note))
            others = asyncio.gather(*(model.acompletion(PROMPTS[i], **GREEDY) for i in (0, 3)))
            await started.wait()
            doomed.cancel()
            with pytest.raises(asyncio.CancelledError):
                await doomed
            return await stopped, await others

        stopped, (first, last) = asyncio.run(asyncio.wait_for(run_all(), TIMEOUT))
        assert (model.active_work_count(), model.pending_work_count()) == (0, 0)
    assert callback_threads == {threading.current_thread()}  # the event loop's, not the engine's
    assert stopped.finish_reason == "cancelled" and stopped.completion == expected[1].completion[:3]
    assert stopped.tokens == expected[1].tokens[:3] and stopped.fed_tokens == 3
    assert first.tokens == expected[0].tokens and last.tokens == expected[3].tokens


def test_a_slow_stream_callback_holds_back_only_its_own_completion(byte_v7):
    proceed = threading.Event()
    callback_threads = set()

    def slow(text, so_far):
        callback_threads.add(threading.current_thread())
        assert proceed.wait(TIMEOUT)

    with RWKV(byte_v7, threads=1, concurrent=4) as model:
        caller = {}

        def slow_completion():
            caller["thread"] = threading.current_thread()
            return model.completion(PROMPTS[0], stream_callback=slow, **GREEDY)

        def others():
            try:
                return in_threads([lambda p=p: model.completion(p, **GREEDY) for p in PROMPTS[1:4]])
            finally:
                proceed.set()

        slow_result, other_results = in_threads([slow_completion, others])
    assert callback_threads == {caller["thread"]}  # the caller's thread, never the engine's
    assert [r.completion for r in other_results] == [
        alone(byte_v7, p, **GREEDY).completion for p in PROMPTS[1:4]]
    assert slow_result.completion == alone(byte_v7, PROMPTS[0], **GREEDY).completion


# ---- the queue and free() ----


def test_more_completions_than_places_wait_in_the_queue(byte_v4):
    with RWKV(byte_v4, threads=1, concurrent=2) as model:
        held = [model.completion(p, max_tokens=10_000, temperature=0, stream=True)
                for p in PROMPTS[:2]]
        for stream in held:
            next(stream)  # in the batch now, paused until read again
        assert (model.active_work_count(), model.pending_work_count()) == (2, 0)
        results = []
        waiting = [threading.Thread(target=lambda p=p: results.append(
            model.completion(p, max_tokens=5, temperature=0)), daemon=True) for p in PROMPTS[2:5]]
        for thread in waiting:
            thread.start()
        wait_until(lambda: model.pending_work_count() == 3, "three queued completions")
        assert model.active_work_count() == 2
        held[0].close()  # a place frees up: the queue moves, one at a time
        wait_until(lambda: len(results) == 3, "the queued completions")
        assert (model.active_work_count(), model.pending_work_count()) == (1, 0)
        held[1].close()
        assert (model.active_work_count(), model.pending_work_count()) == (0, 0)
        for thread in waiting:
            thread.join(TIMEOUT)
    assert [r.usage.completionTokens for r in results] == [5, 5, 5]


def test_free_ends_queued_and_running_completions_with_a_clear_error(byte_v4):
    model = RWKV(byte_v4, threads=1, concurrent=2).setup()
    calls = [lambda p=p: model.completion(p, max_tokens=1_000_000, temperature=0)
             for p in PROMPTS[:5]]
    outcomes: list = []
    runner = threading.Thread(target=lambda: outcomes.extend(in_threads(calls)), daemon=True)
    runner.start()
    wait_until(lambda: (model.active_work_count(), model.pending_work_count()) == (2, 3),
               "two running and three queued completions")

    async def queued_task():
        return await model.acompletion(PROMPTS[5], max_tokens=10)

    async def free_meanwhile():
        task = asyncio.ensure_future(queued_task())
        while model.pending_work_count() < 4:
            await asyncio.sleep(0.002)
        await asyncio.get_running_loop().run_in_executor(None, model.free)
        with pytest.raises(RWKVError, match="freed"):
            await task

    asyncio.run(asyncio.wait_for(free_meanwhile(), TIMEOUT))
    runner.join(TIMEOUT)
    assert not runner.is_alive()
    assert len(outcomes) == 5
    for outcome in outcomes:
        assert isinstance(outcome, RWKVError) and "was freed" in str(outcome), outcome
    with pytest.raises(RWKVError, match="not loaded"):
        model.completion(PROMPTS[0])
    with model:  # freed, not broken
        again = model.completion(PROMPTS[0], **GREEDY)
    assert again.completion == alone(byte_v4, PROMPTS[0], **GREEDY).completion


def test_a_model_dropped_without_free_stops_its_engine_thread(byte_v7):
    model = RWKV(byte_v7, threads=1).setup()
    model.completion(PROMPTS[0], max_tokens=4)
    scheduler = model._loaded.scheduler
    engine_thread, context = scheduler._thread, scheduler.context
    del model
    gc.collect()
    engine_thread.join(TIMEOUT)
    assert not engine_thread.is_alive() and context.closed


def test_sixteen_concurrent_completions_share_one_context(byte_v7):
    library = CountingLibrary()
    with RWKV(byte_v7, threads=1, concurrent=N, library=library) as model:
        model._loaded.scheduler.step_log = collections.deque()
        in_threads([lambda p=p: model.completion(p, **GREEDY) for p in PROMPTS])
        assert max(decode_rows(model)) > 1
    # no clone per completion: each adds only its own state and logits
    assert library.created == {"init_from_file": 1}


def test_whole_context_work_runs_between_steps_beside_running_completions(byte_v7):
    """Scheduler.call: work that needs the context to itself (perplexity) runs on the engine
    thread between two steps; the completions around it are unchanged."""
    expected = [alone(byte_v7, p, **GREEDY) for p in PROMPTS[:3]]
    with RWKV(byte_v7, threads=1, concurrent=3) as model:
        scheduler = model._loaded.scheduler
        seen = []

        def work(context):
            seen.append(threading.current_thread())
            state = np.empty(context.state_len, np.float32)
            logits = np.empty(context.logits_len, np.float32)
            context.eval_sequence(list(b"dragons"), None, state, logits)
            return logits.copy()

        def calls():
            return [scheduler.call(work) for _ in range(20)]

        *results, logits = in_threads(
            [lambda p=p: model.completion(p, **GREEDY) for p in PROMPTS[:3]] + [calls])
        with pytest.raises(ZeroDivisionError):
            scheduler.call(lambda context: 1 / 0)
        assert seen == [scheduler._thread] * 20
    assert [r.tokens for r in results] == [r.tokens for r in expected]
    assert all(np.array_equal(each, logits[0]) for each in logits)
    with pytest.raises(RWKVError, match="freed"):
        scheduler.call(lambda context: None)


# ---- prompts between decode steps ----


def test_a_long_prompt_is_read_in_chunks_while_the_others_keep_generating(byte_v7):
    batch_size = 16
    long_prompt = "The long prompt: " + "dragons fly over green hills; " * 20
    n_long = len(long_prompt.encode())
    with RWKV(byte_v7, threads=1, concurrent=4, batch_size=batch_size) as model:
        scheduler = model._loaded.scheduler
        scheduler.step_log = log = collections.deque()
        enough = threading.Event()
        runners = [lambda p=p: model.completion(p, max_tokens=1_000_000, temperature=0,
                                                stop_event=enough) for p in PROMPTS[:3]]
        outcomes: list = []
        runner = threading.Thread(target=lambda: outcomes.extend(in_threads(runners)))
        runner.start()
        wait_until(lambda: any(step.decode_rows == 3 for step in log), "three generating streams")
        first = len(log)
        reply = model.completion(long_prompt, max_tokens=1, temperature=0)
        during = list(log)[first:]
        enough.set()
        runner.join(TIMEOUT)
    assert reply.usage.promptTokens == n_long
    prompt_steps = [(step.decode_rows, step.prompt_tokens) for step in during if step.prompt_tokens]
    # one chunk of at most batch_size tokens per step, as many steps as chunks ...
    assert [tokens for _, tokens in prompt_steps] == (
        [batch_size] * (n_long // batch_size) + [n_long % batch_size] * (n_long % batch_size > 0))
    # ... and every one of them advanced the three running streams too
    assert all(rows == 3 for rows, _ in prompt_steps)
    assert [result.finish_reason for result in outcomes] == ["cancelled"] * 3


# ---- an engine without rwkv_eval_batch ----


def test_an_engine_without_eval_batch_runs_one_eval_per_sequence(float_model):
    expected = [alone(float_model, p, **GREEDY) for p in PROMPTS[:4]]
    library = SerialLibrary()
    with RWKV(float_model, threads=1, concurrent=4, library=library) as model:
        results = in_threads([lambda p=p: model.completion(p, **GREEDY) for p in PROMPTS[:4]])
    assert [r.tokens for r in results] == [r.tokens for r in expected]
    assert library.evals >= sum(r.fed_tokens for r in results)
