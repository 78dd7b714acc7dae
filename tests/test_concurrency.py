"""Concurrency under stress, through the public API only (RWKV(..., concurrent=N), completion,
acompletion, stream=True, free), so that it checks whatever schedules the completions.

Eight threads run twenty completions each on a model with fewer places in its batch than
threads, with random prompts, stop strings, seeds and sampling options, and random ways of
ending early: a
stop_event set from the stream callback or from a timer, should_stop, closing a stream
iterator, leaving an async stream, cancelling an asyncio task. Then the same load runs until
free() is called while completions are queued. Every completion must end (a result, or a
clear error for those free() turned away), and every completion that is reproducible (greedy
or seeded) must give what the same request gives alone on a fresh model, or a prefix of it
when it was ended early. Every wait is bounded: a hang fails the test instead of freezing CI.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
import traceback
from dataclasses import dataclass, field

import pytest

from rwkv_cli import RWKV, RWKVError

# An exception a thread did not catch (or one Python could not raise) fails the test.
pytestmark = [
    pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning"),
    pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
]

N_THREADS, JOBS_PER_THREAD, CONTEXTS = 8, 20, 3
DEADLINE = 120.0  # seconds for a whole phase (each takes well under a second when all is well)

# No prompt is a prefix of another, so whatever the shared state cache holds when a completion
# starts, its prompt is evaluated from the same state as on a fresh model.
PROMPTS = [f"{letter}: the dragon said" for letter in "ABCDEFGH"]
HOW = (
    "plain", "plain", "callback_event", "timer_event", "should_stop", "stream", "stream_close",
    "acompletion", "astream_break", "atask_cancel",
)
# The ways that may end a completion before its natural end.
CANCELLING = {"callback_event", "timer_event", "should_stop", "stream_close", "astream_break",
              "atask_cancel"}


@dataclass
class Job:
    id: int
    prompt: str
    options: dict  # completion options
    how: str  # how it runs and may be ended early (HOW)
    after: int  # chunks, calls or milliseconds before ending it early

    @property
    def kwargs(self) -> dict:
        return dict(self.options)

    @property
    def key(self) -> tuple:
        """What makes two jobs the same request."""
        return self.prompt, repr(sorted(self.options.items()))

    @property
    def reproducible(self) -> bool:
        kwargs = self.kwargs
        return kwargs["temperature"] == 0 or kwargs["seed"] is not None


@dataclass
class Outcome:
    job: Job
    result: object = None  # CompletionResult
    texts: list = field(default_factory=list)  # streamed pieces, in order
    error: BaseException | None = None
    trace: str = ""


def random_job(rng: random.Random, job_id: int) -> Job:
    options = {
        "max_tokens": rng.randint(1, 40),
        "temperature": rng.choice([0, 0, 0.7, 1.0, 1.4]),
        "top_p": rng.choice([1.0, 0.9, 0.5]),
        "top_k": rng.choice([0, 0, 5, 40]),
        "presence_penalty": rng.choice([0.0, 0.0, 0.5]),
        "frequency_penalty": rng.choice([0.0, 0.0, 0.3]),
        "seed": rng.choice([None] + [rng.randrange(1 << 31) for _ in range(5)]),
        # one or two printable characters: likely enough to end some completions
        "stop": rng.choice([None, None, [chr(rng.randrange(33, 127))],
                            [chr(rng.randrange(33, 127)) + chr(rng.randrange(33, 127)),
                             chr(rng.randrange(33, 127))]]),
    }
    return Job(job_id, rng.choice(PROMPTS), options, rng.choice(HOW), rng.randint(1, 8))


def run_job(model: RWKV, job: Job) -> Outcome:
    """Run one job as its `how` says; never raises (the outcome holds the error)."""
    outcome = Outcome(job)
    kwargs = job.kwargs
    texts = outcome.texts

    def collect(text, so_far):
        texts.append(text)

    try:
        if job.how == "plain":
            outcome.result = model.completion(job.prompt, stream_callback=collect, **kwargs)
        elif job.how == "callback_event":
            event = threading.Event()

            def collect_then_stop(text, so_far):
                texts.append(text)
                if len(texts) >= job.after:
                    event.set()

            outcome.result = model.completion(
                job.prompt, stream_callback=collect_then_stop, stop_event=event, **kwargs)
        elif job.how == "timer_event":
            event = threading.Event()
            timer = threading.Timer(job.after / 1000, event.set)
            timer.start()
            try:
                outcome.result = model.completion(
                    job.prompt, stream_callback=collect, stop_event=event, **kwargs)
            finally:
                timer.cancel()
        elif job.how == "should_stop":
            calls = []

            def should_stop():
                calls.append(1)
                return len(calls) > job.after

            outcome.result = model.completion(
                job.prompt, stream_callback=collect, should_stop=should_stop, **kwargs)
        elif job.how in ("stream", "stream_close"):
            stream = model.completion(job.prompt, stream=True, **kwargs)
            for chunk in stream:
                if chunk.result is not None:
                    outcome.result = chunk.result
                    break
                texts.append(chunk.text)
                if job.how == "stream_close" and len(texts) == job.after:
                    stream.close()
                    break
        else:
            asyncio.run(asyncio.wait_for(run_async_job(model, job, outcome), DEADLINE))
    except BaseException as error:  # noqa: BLE001 - judged by check_outcome
        outcome.error = error
        outcome.trace = traceback.format_exc()
    return outcome


async def run_async_job(model: RWKV, job: Job, outcome: Outcome) -> None:
    kwargs, texts = job.kwargs, outcome.texts
    if job.how == "acompletion":
        outcome.result = await model.acompletion(
            job.prompt, stream_callback=lambda text, so_far: texts.append(text), **kwargs)
    elif job.how == "astream_break":
        stream = await model.acompletion(job.prompt, stream=True, **kwargs)
        try:
            async for chunk in stream:
                if chunk.result is not None:
                    outcome.result = chunk.result
                    break
                texts.append(chunk.text)
                if len(texts) == job.after:
                    break
        finally:
            await stream.aclose()
    else:  # atask_cancel: cancel the task once it has streamed `after` pieces
        started = threading.Event()

        def collect(text, so_far):
            texts.append(text)
            if len(texts) >= job.after:
                started.set()

        task = asyncio.ensure_future(
            model.acompletion(job.prompt, stream_callback=collect, **kwargs))
        while not (started.is_set() or task.done()):
            await asyncio.sleep(0.001)
        if task.done():
            outcome.result = task.result()
            return
        task.cancel()
        try:
            outcome.result = await task  # it may have finished before the cancel reached it
        except asyncio.CancelledError:
            pass


class SerialRuns:
    """What each reproducible request gives alone, uncancelled, on a fresh one-sequence model
    without a cache (computed on first use, from the test's thread)."""

    def __init__(self, path):
        self.model = RWKV(path, threads=1, concurrent=1, state_cache_size=0).setup()
        self.results = {}

    def of(self, job: Job):
        if job.key not in self.results:
            self.results[job.key] = self.model.completion(job.prompt, **job.kwargs)
        return self.results[job.key]


def check_outcome(outcome: Outcome, serial: SerialRuns, freed_is_fine: bool = False) -> None:
    job = outcome.job
    where = f"job {job}"
    if outcome.error is not None:
        message = str(outcome.error)
        assert freed_is_fine, f"{where} raised:\n{outcome.trace}"
        assert isinstance(outcome.error, RWKVError), f"{where} raised:\n{outcome.trace}"
        assert "freed" in message or "not loaded" in message, f"{where}: unclear error {message!r}"
        return
    kwargs = job.kwargs
    result = outcome.result
    if result is None:  # a stream left early, or a cancelled task: no result to see
        assert job.how in CANCELLING, where
        if job.how in ("stream_close", "astream_break"):
            assert len(outcome.texts) == job.after, where
        if job.reproducible:
            assert serial.of(job).completion.startswith("".join(outcome.texts)), where
        return
    assert result.finish_reason in ("length", "stop", "eos", "cancelled"), where
    assert result.usage.completionTokens == len(result.tokens) <= kwargs["max_tokens"], where
    assert result.prompt == job.prompt, where
    assert "".join(outcome.texts) == result.completion, where
    for stop in kwargs["stop"] or ():
        assert stop not in result.completion, where
    if result.finish_reason == "cancelled":
        assert job.how in CANCELLING, where
    if not job.reproducible:
        return
    alone = serial.of(job)
    if result.finish_reason == "cancelled":
        # the same tokens as far as it went
        assert result.tokens == alone.tokens[: len(result.tokens)], where
    else:
        assert (result.completion, result.tokens, result.finish_reason) == (
            alone.completion, alone.tokens, alone.finish_reason), where


def run_threads(model: RWKV, plans: list[list[Job]], stop_at_error: bool,
                deadline: float) -> tuple[list[Outcome], list[threading.Thread], dict]:
    """Start one thread per plan; returns the outcomes (filled as they end), the threads and
    each thread's job in progress."""
    outcomes: list[Outcome] = []
    current: dict[int, Job | None] = {}
    lock = threading.Lock()

    def work(index: int, plan: list[Job]) -> None:
        for job in plan:
            if time.monotonic() > deadline:
                break
            current[index] = job
            outcome = run_job(model, job)
            with lock:
                outcomes.append(outcome)
            if stop_at_error and outcome.error is not None:
                break
        current[index] = None

    threads = [threading.Thread(target=work, args=(i, plan), daemon=True, name=f"stress-{i}")
               for i, plan in enumerate(plans)]
    for thread in threads:
        thread.start()
    return outcomes, threads, current


def join_all(threads: list[threading.Thread], current: dict, deadline: float) -> None:
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [f"{t.name}: {current.get(i)}" for i, t in enumerate(threads) if t.is_alive()]
    assert not stuck, "completions did not end (a hang):\n" + "\n".join(stuck)


def bounded(call, seconds: float, what: str):
    """call() on a daemon thread; its value, or a failure if it takes longer than `seconds`
    (a hang), or its exception."""
    done = threading.Event()
    returned = []

    def run():
        try:
            returned.append((True, call()))
        except BaseException as error:  # noqa: BLE001 - raised below
            returned.append((False, error))
        done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(seconds), f"{what} did not return within {seconds} s (a hang)"
    ok, value = returned[0]
    if not ok:
        raise value
    return value


@pytest.fixture
def serial_runs():
    """serial_runs(path): a SerialRuns of that model, freed after the test."""
    made = []

    def make(path) -> SerialRuns:
        made.append(SerialRuns(path))
        return made[-1]

    yield make
    for runs in made:
        runs.model.free()


def assert_nothing_logged_an_error(caplog) -> None:
    """No exception escaped into a logger on the way (e.g. a thread pool's future callback
    finding its event loop closed); exceptions in threads fail by the module's marks."""
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    formatter = logging.Formatter()
    assert not errors, "\n".join(formatter.format(r) for r in errors)


def test_threads_with_random_options_and_cancellations_match_serial_runs(
    byte_v7, serial_runs, caplog
):
    rng = random.Random(20261)
    plans = [[random_job(rng, t * JOBS_PER_THREAD + j) for j in range(JOBS_PER_THREAD)]
             for t in range(N_THREADS)]
    serial = serial_runs(byte_v7)
    model = RWKV(byte_v7, threads=1, concurrent=CONTEXTS, state_cache_size=16).setup()
    deadline = time.monotonic() + DEADLINE
    outcomes, threads, current = run_threads(model, plans, False, deadline)
    join_all(threads, current, deadline)
    assert (model.active_work_count(), model.pending_work_count()) == (0, 0)
    bounded(model.free, 30, "free()")

    assert len(outcomes) == N_THREADS * JOBS_PER_THREAD
    for outcome in sorted(outcomes, key=lambda o: o.job.id):
        check_outcome(outcome, serial)
    ended = [o.result.finish_reason for o in outcomes if o.result is not None]
    assert {"length", "cancelled"} <= set(ended)  # both the full and the early ends happened
    assert sum(o.job.reproducible and o.job.how not in CANCELLING for o in outcomes) >= 30
    assert_nothing_logged_an_error(caplog)


def test_free_while_completions_are_queued_ends_each_of_them(byte_v4, serial_runs, caplog):
    rng = random.Random(20262)
    plans = [[random_job(rng, t * 1000 + j) for j in range(1000)] for t in range(N_THREADS)]
    serial = serial_runs(byte_v4)
    model = RWKV(byte_v4, threads=1, concurrent=2, state_cache_size=16).setup()
    deadline = time.monotonic() + DEADLINE
    outcomes, threads, current = run_threads(model, plans, True, deadline)
    while len(outcomes) < 2 * N_THREADS and time.monotonic() < deadline:
        time.sleep(0.005)
    # Take both places in the batch with streams left open in this thread: every worker
    # thread's next completion then waits in the queue.
    held = [model.completion(prompt, max_tokens=10_000, temperature=0, stream=True)
            for prompt in PROMPTS[:2]]
    first = [bounded(lambda s=stream: next(s), 30, "a stream's first chunk") for stream in held]
    while model.pending_work_count() < N_THREADS and time.monotonic() < deadline:
        time.sleep(0.005)
    assert model.pending_work_count() == N_THREADS, "the threads' completions were not queued"

    bounded(model.free, 30, "free()")
    join_all(threads, current, deadline)
    for stream in held:
        assert bounded(lambda s=stream: list(s), 30, "a stream closed by free()") == []
    assert all(chunk.text for chunk in first)

    turned_away = [o for o in outcomes if o.error is not None]
    assert len(turned_away) == N_THREADS  # each thread's queued completion
    for outcome in outcomes:
        check_outcome(outcome, serial, freed_is_fine=True)
    assert_nothing_logged_an_error(caplog)

    # Freed, not broken: loaded again, it gives the serial output.
    with model:
        again = bounded(lambda: model.completion(PROMPTS[0], max_tokens=16, temperature=0), 30,
                        "a completion after setup() again")
    alone = serial.model.completion(PROMPTS[0], max_tokens=16, temperature=0)
    assert again.completion == alone.completion
