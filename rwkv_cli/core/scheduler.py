"""The continuous-batching scheduler: one engine thread advances every running completion.

An RWKV sequence is only its state (a fixed-size float array), so the completions of one
model share one engine context: each step, one engine thread feeds every generating
sequence its next token in a single `rwkv_eval_batch` call (one pass over the weights for
all of them) and samples their next tokens from the logits it returns. Completions submitted
from any thread or asyncio task wait in a queue and join the batch at the next step, up to
`capacity` at a time (the model's `concurrent`); a finished, cancelled or abandoned one leaves
the batch at once, and its place goes to the next in the queue. Work that needs the context
to itself (perplexity: all the logits of a chunk) runs on the engine thread between two steps
through `call()`.

Prompts. Each step also evaluates prompt tokens in sequence mode (the prompt's products as
matrix-matrix products): whole chunks of waiting prompts, in arrival order, while their total
stays within `batch_size` tokens (always at least one chunk). A prompt's chunks are fixed by
the prompt alone (`batch_size` tokens each from its first uncached token, the last one
shorter), so its numbers do not depend on what else runs; a chunk of one token joins the
batched call as one more row. So a long prompt arriving while streams generate costs each of
them at most one chunk's time per step, and the prompt itself is read at one chunk per step:
`batch_size` trades its time to first token against the others' time between tokens
(benchmarks/batch.py measures both).

Callers. No user code runs on the engine thread. A completion that has a reader (a stream
callback, a stream iterator) or a `should_stop` is *gated*: each piece of text goes to the
caller's own thread (the event loop, for asyncio), which runs the callback or hands the
chunk to the reader, evaluates `should_stop`, and then gives the sequence a permit for its
next token. The engine feeds the token it just sampled meanwhile, so a prompt caller costs no
step, and a slow callback (or a stream nobody reads) only holds back its own sequence. This
keeps the order of a single completion exactly: the callback for a piece runs, and
`should_stop` / `stop_event` are checked, before the next token is sampled. `stop_event`s are
checked by the engine itself (reading an Event runs no user code).

Numerics: with FP32/FP16 weights, `rwkv_eval_batch` over up to 16 sequences gives exactly the
logits and states of `rwkv_eval` for each, so a greedy completion gives the same text alone or
in a batch of up to 16. With quantized weights, the batched products over 4 and more rows sum
in another order, and an activation sitting on an int8 rounding near-tie can land on the
neighbouring code: logits differ by the effect of one code (a fraction of a percent), which
changes the top token where two are almost tied, and greedy text differs from the same
completion alone from there on. Measured with 16 greedy completions of 64 tokens, batched
against alone: random-weight 0.1B shape, Q8_0 (flat logits, ties everywhere): 12 of 16
differed somewhere (from token 4 to 57); the tiny trained fixture models, Q5_0 and Q5_1: v4
and v7 none, v6 3 of 16, v5.2 6-10 of 16; FP16 none anywhere. An engine without
`rwkv_eval_batch` (an rwkv.cpp library through RWKV_CPP_LIB) gets one `rwkv_eval` per sequence
per step, the same numbers as alone.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable, NamedTuple, TypeVar

import numpy as np

from ..engine import Context
from ..errors import RWKVError, UserError
from .generate import Generation, Request
from .results import CompletionChunk, CompletionResult, Perf, Usage
from .state_cache import StateCache
from .tokenizer import Tokenizer

T = TypeVar("T")

# A sampled token without text, sent to a caller that evaluates should_stop after every token.
TICK = object()


class Step(NamedTuple):
    """One engine step, as recorded in `Scheduler.step_log` (for tests and benchmarks)."""

    decode_rows: int  # generating sequences advanced by one token
    prompt_tokens: int  # prompt tokens evaluated
    ended: float  # time.perf_counter() at its end


NO_BUFFER = np.empty(0, np.float32)

# Where a sequence is (engine thread only).
QUEUED, PROMPT, SAMPLE, FEED, ENDED = "queued", "prompt", "sample", "feed", "ended"


class Failed:
    """An exception for the caller, raised on its own thread."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException):
        self.error = error

    @classmethod
    def each(cls, error: BaseException) -> Failed:
        """One error of several sequences, as an exception of this caller's own (an exception
        raised on several threads at once would share one traceback)."""
        own = RWKVError(str(error), getattr(error, "flags", 0))
        own.__cause__ = error
        return cls(own)


class Job:
    """One completion inside the scheduler.

    The caller's side (events, permit, cancel, abandon) is shared with the engine thread under
    the scheduler's lock; the sequence (buffers, Generation, progress) belongs to the engine
    thread alone.
    """

    def __init__(self, scheduler: Scheduler, request: Request, loop=None):
        self._scheduler = scheduler
        self.request = request
        self.gated = request.emit_chunks or request.should_stop is not None
        # shared, under the scheduler's lock
        self.events: deque = deque()
        self.permit = True  # the caller's permit to sample the next token (gated jobs)
        self.cancel_requested = False
        self.abandoned = False  # nobody will read the outcome: drop it
        self.ended = False  # its last event was sent (or it was abandoned)
        self._cond = threading.Condition(scheduler._lock) if loop is None else None
        self._loop = loop
        self._ready = asyncio.Event() if loop is not None else None
        # the engine thread's
        self.phase = QUEUED
        self.generation: Generation | None = None
        self.state = NO_BUFFER  # its own state and logits, from admission on
        self.logits = NO_BUFFER
        self.fresh = True  # the state is the initial one (state_in NULL for the first call)
        self.position = 0  # prompt tokens evaluated (or taken from the cache)
        self.n_cached = 0
        self.token = 0  # the token to feed next (phase FEED)
        self.prompt_seconds = 0.0
        self.prompt_done = 0.0

    # ---- the caller's side ----

    def grant(self) -> None:
        """Allow the next token to be sampled (the caller has handled the last event)."""
        with self._scheduler._lock:
            if not self.permit:
                self.permit = True
                self._scheduler._wake.notify()

    def cancel(self) -> None:
        """End the completion before its next token, with a result ("cancelled")."""
        with self._scheduler._lock:
            self.cancel_requested = True
            self._scheduler._wake.notify()

    def abandon(self) -> None:
        """Nobody reads this completion any more: it leaves the queue or the batch now.

        Never blocks, so it is safe anywhere (a generator's finalizer may run on any thread)."""
        scheduler = self._scheduler
        with scheduler._lock:
            if self.ended:
                return
            self.abandoned = self.ended = True
            try:
                scheduler._pending.remove(self)
            except ValueError:
                pass  # in the batch: the engine drops it before its next step
            scheduler._wake.notify()

    def wait(self) -> Any:
        """The next event (a chunk, TICK or Failed), waiting for it on this thread."""
        with self._scheduler._lock:
            while not self.events:
                self._cond.wait()  # type: ignore[union-attr]
            return self.events.popleft()

    async def await_event(self) -> Any:
        """The next event, for a job submitted from an event loop."""
        ready = self._ready
        assert ready is not None
        while True:
            with self._scheduler._lock:
                if self.events:
                    return self.events.popleft()
                ready.clear()  # a later event sets it: its set() is queued after this
            await ready.wait()

    # ---- the engine's side (lock held) ----

    def _deliver(self, *items: Any) -> None:
        self.events.extend(items)
        if self._cond is not None:
            self._cond.notify()
            return
        try:
            self._loop.call_soon_threadsafe(self._ready.set)  # type: ignore[union-attr]
        except RuntimeError:  # the loop is closed: nobody is reading any more
            self.abandoned = True


class Scheduler:
    """The engine thread of one model and the queue of completions waiting for a place."""

    def __init__(
        self,
        context: Context,
        tokenizer: Tokenizer,
        cache: StateCache,
        batch_size: int,
        capacity: int,
        name: str,
    ):
        self.context = context
        self.tokenizer = tokenizer
        self.cache = cache
        self.batch_size = batch_size
        self.capacity = capacity
        self.name = name
        self.batched = context.library.has_eval_batch
        self._state_len = context.state_len
        self._logits_len = context.logits_len
        # Re-entrant: garbage collection can run a stream's finalizer (abandon) or a dropped
        # model's (close) on the engine thread while it holds the lock.
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._pending: deque[Job] = deque()
        self._active: list[Job] = []  # in the batch, in arrival order
        self._calls: deque[tuple[Callable[[Context], Any], Future]] = deque()
        self._closing = False
        # For tests and benchmarks: steps taken, and a record of each when step_log is a deque.
        self.steps = 0
        self.step_log: deque[Step] | None = None
        self._thread = threading.Thread(target=self._serve, name=f"rwkv-engine {name}", daemon=True)
        self._thread.start()

    # ---- for callers ----

    def submit(self, request: Request, loop: asyncio.AbstractEventLoop | None = None) -> Job:
        """Queue a completion; it joins the batch at the next step when a place is free."""
        job = Job(self, request, loop)
        if request.should_stop is not None:
            job.permit = False  # the caller checks should_stop first, then grants
        with self._lock:
            if self._closing:
                raise UserError(f"the model {self.name} was freed")
            self._pending.append(job)
            self._wake.notify()
        return job

    def call(self, work: Callable[[Context], T]) -> T:
        """`work(context)` on the engine thread between two steps, with the context to itself
        (the batch waits meanwhile): for whole-context work such as perplexity. Its value,
        or its exception, comes back to the calling thread."""
        if threading.current_thread() is self._thread:
            return work(self.context)
        future: Future = Future()
        with self._lock:
            if self._closing:
                raise UserError(f"the model {self.name} was freed")
            self._calls.append((work, future))
            self._wake.notify()
        return future.result()

    def active(self) -> int:
        with self._lock:
            return sum(1 for job in self._active if not job.abandoned)

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def close(self) -> None:
        """End every queued and running completion with a clear error, stop the engine thread
        (after its current step) and free the context. Safe to call twice and from any thread."""
        with self._lock:
            if not self._closing:
                self._closing = True
                for job in [*self._pending, *self._active]:
                    self._end(job, Failed(UserError(f"the model {self.name} was freed")))
                self._pending.clear()
                for _, future in self._calls:
                    future.set_exception(UserError(f"the model {self.name} was freed"))
                self._calls.clear()
                self._wake.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join()

    # ---- the engine thread ----

    def _serve(self) -> None:
        # Ctrl-C belongs to the main thread. The kernel may hand a process's SIGINT to any
        # thread that does not block it; taken here, Python's handler would wait until the main
        # thread next runs, and a main thread blocked reading the user's line would not wake.
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            while True:
                with self._lock:
                    admitted = self._next_work()
                    if admitted is None:
                        return
                    calls = list(self._calls)
                    self._calls.clear()
                for work, future in calls:
                    try:
                        future.set_result(work(self.context))
                    except BaseException as error:  # noqa: BLE001 - the caller's to see
                        future.set_exception(error)
                try:
                    self._step(admitted)
                except Exception as error:  # noqa: BLE001 - a bug must not strand the callers
                    with self._lock:
                        for job in list(self._active):
                            self._end(job, Failed.each(error))
        finally:
            self.context.close()

    def _next_work(self) -> list[Job] | None:
        """Wait for something to do (lock held): drop abandoned jobs, admit queued ones; the
        newly admitted, or None once closing."""
        while True:
            if self._closing:
                return None
            self._active = [job for job in self._active if not job.abandoned]
            admitted = []
            while self._pending and len(self._active) < self.capacity:
                job = self._pending.popleft()
                self._active.append(job)
                admitted.append(job)
            if admitted or self._calls or any(self._runnable(job) for job in self._active):
                return admitted
            self._wake.wait()

    @staticmethod
    def _runnable(job: Job) -> bool:
        sampling = job.phase == SAMPLE and (job.permit or not job.gated)
        return sampling or job.phase in (PROMPT, FEED)

    def _step(self, admitted: list[Job]) -> None:
        for job in admitted:
            self._start(job)
        for job in list(self._active):
            if job.phase == SAMPLE and (job.permit or not job.gated) and not job.ended:
                self._sample(job)
        rows = [job for job in self._active if job.phase == FEED and not job.ended]
        one_token, chunks = self._prompt_chunks()
        if not (rows or one_token or chunks):
            return
        self.steps += 1
        if rows or one_token:
            self._eval_rows(rows, one_token)
        for job, n in chunks:
            self._eval_chunk(job, n)
        if self.step_log is not None:
            prompt_tokens = len(one_token) + sum(n for _, n in chunks)
            self.step_log.append(Step(len(rows), prompt_tokens, time.perf_counter()))

    def _start(self, job: Job) -> None:
        """Give an admitted job its buffers, its cached prefix and its Generation."""
        started = time.perf_counter()
        request = job.request
        tokens = request.tokens
        job.state = np.empty(self._state_len, np.float32)
        job.logits = np.empty(self._logits_len, np.float32)
        if request.init_state is not None:
            job.state[:] = request.init_state
            job.fresh = False
        elif self.cache.enabled:
            entry = self.cache.lookup(tokens)
            if entry is not None and entry.logits is None:
                entry = self.cache.lookup(tokens, max_length=len(tokens) - 1)
            if entry is not None:
                job.n_cached = entry.n_tokens
                job.state[:] = entry.state
                job.fresh = False
                if job.n_cached == len(tokens):
                    job.logits[:] = entry.logits
        job.position = job.n_cached
        tokenizer = self.tokenizer
        try:
            job.generation = Generation(
                request.sampler, tokenizer.decoder(), tokenizer.eos_token, request.max_tokens,
                request.stops,
            )
        except Exception as error:  # noqa: BLE001 - the caller's to see
            self._finish_with(job, Failed(error))
            return
        job.prompt_seconds = request.prepare_seconds + (time.perf_counter() - started)
        if job.position == len(tokens):
            self._prompt_finished(job)
        else:
            job.phase = PROMPT

    def _prompt_chunks(self) -> tuple[list[Job], list[tuple[Job, int]]]:
        """This step's prompt work: jobs whose next chunk is one token (rows of the batched
        call), and (job, n) chunks for sequence mode, within the step's token budget."""
        one_token: list[Job] = []
        chunks: list[tuple[Job, int]] = []
        budget = self.batch_size
        for job in self._active:
            if job.phase != PROMPT or job.ended:
                continue
            n = min(self.batch_size, len(job.request.tokens) - job.position)
            if (one_token or chunks) and n > budget:
                break  # in arrival order: a later prompt never overtakes an earlier one
            budget -= n
            if n == 1:
                one_token.append(job)
            else:
                chunks.append((job, n))
            if budget <= 0:
                break
        return one_token, chunks

    def _eval_rows(self, rows: list[Job], one_token: list[Job]) -> None:
        """One token for each generating sequence and each one-token prompt chunk."""
        jobs = rows + one_token
        tokens = [job.token for job in rows]
        tokens += [job.request.tokens[job.position] for job in one_token]
        states_in = [None if job.fresh else job.state for job in jobs]
        states_out = [job.state for job in jobs]
        logits_out = [job.logits for job in rows] + [
            job.logits if job.position + 1 == len(job.request.tokens) else None for job in one_token
        ]
        context = self.context
        started = time.perf_counter()
        if self.batched:
            try:
                context.eval_batch(tokens, states_in, states_out, logits_out)
            except RWKVError as error:
                for job in jobs:
                    self._finish_with(job, Failed.each(error))
                return
            failed: set[int] = set()
        else:
            failed = set()
            library, pointer = context.library, context.pointer
            for i, job in enumerate(jobs):
                try:
                    library.eval(pointer, tokens[i], states_in[i], states_out[i], logits_out[i])
                except RWKVError as error:
                    failed.add(i)
                    self._finish_with(job, Failed(error))
        seconds = time.perf_counter() - started
        for i, job in enumerate(rows):
            if i not in failed:
                job.phase = SAMPLE
        for i, job in enumerate(one_token, start=len(rows)):
            if i not in failed:
                job.prompt_seconds += seconds
                self._advance_prompt(job, 1)

    def _eval_chunk(self, job: Job, n: int) -> None:
        tokens = job.request.tokens
        last = job.position + n == len(tokens)
        started = time.perf_counter()
        try:
            self.context.eval_sequence_in_chunks(
                tokens[job.position : job.position + n], self.batch_size,
                None if job.fresh else job.state, job.state, job.logits if last else None,
            )
        except RWKVError as error:
            self._finish_with(job, Failed(error))
            return
        job.prompt_seconds += time.perf_counter() - started
        self._advance_prompt(job, n)

    def _advance_prompt(self, job: Job, n: int) -> None:
        job.position += n
        job.fresh = False
        if job.position == len(job.request.tokens):
            self._prompt_finished(job)

    def _prompt_finished(self, job: Job) -> None:
        """Cache the prompt's state, then sample (or end: max_tokens=0)."""
        started = time.perf_counter()
        request = job.request
        evaluated = job.position > job.n_cached
        if request.init_state is None and self.cache.enabled and (evaluated or request.pin):
            self.cache.put(request.tokens, job.state, job.logits, pin=request.pin)
        job.prompt_done = time.perf_counter()
        job.prompt_seconds += job.prompt_done - started
        if job.generation.done:  # type: ignore[union-attr]
            self._finish(job)
        else:
            job.phase = SAMPLE

    def _sample(self, job: Job) -> None:
        request, generation = job.request, job.generation
        assert generation is not None
        if job.cancel_requested or any(event.is_set() for event in request.stop_events):
            generation.cancel()
            self._finish(job)
            return
        try:
            token = generation.step(job.logits)
        except Exception as error:  # noqa: BLE001 - the caller's to see
            self._finish_with(job, Failed(error))
            return
        if token is None:
            self._finish(job)
            return
        job.token = token
        job.phase = FEED
        if request.emit_chunks:
            piece = generation.take_text()
            if piece:
                usage = Usage.of(len(request.tokens), len(generation.tokens), job.n_cached)
                self._send(job, CompletionChunk(piece, generation.completion, usage))
                return
        if request.should_stop is not None:
            self._send(job, TICK)

    def _finish(self, job: Job) -> None:
        """The result of an ended Generation, to the cache and to the caller."""
        request, generation = job.request, job.generation
        assert generation is not None and generation.finish_reason is not None
        fed = generation.fed_tokens
        if request.init_state is None and self.cache.enabled and fed > 0:
            self.cache.put(request.tokens + generation.tokens[:fed], job.state, job.logits)
        finished = time.perf_counter()
        usage = Usage.of(len(request.tokens), len(generation.tokens), job.n_cached)
        result = CompletionResult(
            completion=generation.completion,
            prompt=request.prompt,
            usage=usage,
            perf=Perf.of(usage, job.prompt_seconds * 1000.0, (finished - job.prompt_done) * 1000.0),
            finish_reason=generation.finish_reason,
            tokens=generation.tokens,
            state=job.state,  # the job is over: its buffer is the result's
            fed_tokens=fed,
        )
        events: list[Any] = []
        if request.emit_chunks:
            piece = generation.take_text()
            if piece:
                events.append(CompletionChunk(piece, generation.completion, usage))
        events.append(CompletionChunk("", result.completion, usage, result.finish_reason, result))
        self._finish_with(job, *events)

    def _finish_with(self, job: Job, *events: Any) -> None:
        with self._lock:
            self._end(job, *events)

    def _send(self, job: Job, event: Any) -> None:
        """A piece (or TICK) to a gated job's caller; it grants the next token once handled."""
        with self._lock:
            if not job.ended:
                job.permit = False
                job._deliver(event)

    def _end(self, job: Job, *events: Any) -> None:
        """(lock held) The job's last events; it leaves the batch."""
        job.phase = ENDED
        if not job.ended:
            job.ended = True
            job._deliver(*events)
        if job in self._active:
            self._active.remove(job)
