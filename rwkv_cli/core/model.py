"""The RWKV class: load a model, run completions, cache prompt states, serve several threads.

    from rwkv_cli import RWKV

    with RWKV("model.bin") as model:
        result = model.completion("The capital of France is", max_tokens=16, temperature=0)
        print(result.completion, result.usage.promptTokens, result.perf.completionPerSecond)

        for chunk in model.completion("Once upon a time", stream=True):
            print(chunk.text, end="")

This class is the public face; its parts are beside it: option checks (options.py), loading
and freeing (lifecycle.py), the continuous-batching scheduler (scheduler.py: one engine thread
advances every running completion in one call per token), the per-sequence token logic
(generate.py), sampling, the state cache, tokenizers, results. The math lives in the C engine
(engine/).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import weakref
from collections.abc import AsyncIterator, Generator, Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, overload

import numpy as np

from ..engine import Context, Library
from ..errors import InvalidArgument, UserError
from . import options
from .generate import Request
from .lifecycle import LoadedModel, load
from .perplexity import Accumulator, PerplexityProgress, PerplexityResult, chunk_count
from .results import CompletionChunk, CompletionResult, Perf, Usage
from .sampling import Sampler, SamplingParams
from .scheduler import TICK, Failed, Job
from .state_cache import DEFAULT_MAX_BYTES, StateCache
from .tokenizer import Tokenizer, check_tokenizer_name

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "RWKV",
    "CompletionChunk",
    "CompletionResult",
    "Perf",
    "PerplexityResult",
    "Usage",
    "available_cpus",
    "physical_cores",
]

physical_cores = options.physical_cores
available_cpus = options.available_cpus

DEFAULT_BATCH_SIZE = 64
DEFAULT_STATE_CACHE_SIZE = 50

StreamCallback = Callable[[str, str], Any]
ShouldStop = Callable[[], bool]


def _chunk_of(event: Any) -> CompletionChunk | None:
    """What a scheduler event means to the caller of one completion: a chunk to hand on,
    nothing (a tick that only wakes a gated caller), or its error raised."""
    if event is TICK:
        return None
    if isinstance(event, Failed):
        raise event.error
    return event


class RWKV:
    """An RWKV model in the native engine.

    Completions from any number of threads and asyncio tasks share one engine context: one
    engine thread advances all running completions together, one token each per step, in one
    pass over the weights (continuous batching, see core/scheduler.py). A greedy completion
    gives the same text alone or beside others with FP32/FP16 weights (up to 16 at a time);
    with quantized weights a near tie between the top two tokens can resolve the other way in
    a batch, and the text goes on differently from there (measured in the scheduler's notes).

    Args:
        path: the model file (rwkv.cpp format).
        threads: engine threads (default: the physical cores available), capped at the CPUs
            available (see `threads`, the count used).
        gpu_offload: layers to offload, or a percentage string like "50%"; the engine must
            have a GPU backend (ours has none: any non-zero value is an error at setup).
        concurrent: completions in flight at once: that many sequences (each its own state)
            advance together in one batch; more wait in a queue (`pending_work_count()`).
        batch_size: prompt tokens per sequence-mode chunk, and the prompt tokens evaluated per
            step while other completions generate (a larger value reads a long prompt
            sooner and holds the running streams back longer at each of its steps).
        state_cache_size: prompt states kept (0 or False disables the cache).
        tokenizer: "auto" (from n_vocab: 50277 -> 20B, 65536 -> World, 256 -> bytes), "20B",
            "world", "bytes", a tokenizer file (.json Hugging Face, .txt World vocabulary) or a
            `rwkv_cli.core.tokenizer.Tokenizer` object.
        state_cache_bytes: byte cap of the state cache (None: no cap).
        library: an `engine.Library` (e.g. an external rwkv.cpp) instead of the default one.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        threads: int | None = None,
        gpu_offload: int | str = 0,
        concurrent: int = 1,
        batch_size: int = DEFAULT_BATCH_SIZE,
        state_cache_size: int | bool = DEFAULT_STATE_CACHE_SIZE,
        tokenizer: str | os.PathLike | Tokenizer = "auto",
        state_cache_bytes: int | None = DEFAULT_MAX_BYTES,
        library: Library | None = None,
    ):
        self._path = Path(path)
        self._concurrent = options.positive_int("concurrent", concurrent)
        self._threads_requested = threads
        self._threads = options.context_threads(threads)
        options.check_gpu_offload(gpu_offload)
        self._gpu_offload = gpu_offload
        self._batch_size = options.positive_int("batch_size", batch_size)
        entries = options.state_cache_entries(state_cache_size, DEFAULT_STATE_CACHE_SIZE)
        self._cache = StateCache(entries, state_cache_bytes)
        check_tokenizer_name(tokenizer)
        self._tokenizer_choice = tokenizer
        self._library = library
        self._loaded: LoadedModel | None = None
        self._release: weakref.finalize | None = None
        # Stream iterators handed out and not finished: free() closes those that are not being
        # read at that moment (each holds a place in the batch while it is open).
        self._streams: weakref.WeakSet[Generator] = weakref.WeakSet()
        self._streams_lock = threading.Lock()

    # ---- lifecycle ----

    def setup(self) -> RWKV:
        """Load the model (and tokenizer), create its context and start its engine thread;
        idempotent."""
        if self._loaded is None:
            loaded = load(
                self._path, self._threads, self._gpu_offload, self._concurrent,
                self._tokenizer_choice, self._library, self._cache, self._batch_size,
            )
            self._loaded = loaded
            # A model dropped without free() still stops its engine thread and frees its
            # context (at garbage collection, or at exit).
            self._release = weakref.finalize(self, loaded.close)
        return self

    def free(self) -> None:
        """Release the model; `setup()` can load again.

        Open stream iterators that nobody is reading at that moment are closed (they end);
        every other completion, queued or running, ends with a clear error (`RWKVError`: the
        model was freed). Returns once the engine thread has stopped and the context is freed.
        """
        loaded, self._loaded = self._loaded, None
        if loaded is not None:
            self._close_streams()
            if self._release is not None:
                self._release()  # loaded.close(), once

    def _close_streams(self) -> None:
        with self._streams_lock:
            streams = list(self._streams)
        for stream in streams:
            try:
                stream.close()
            except ValueError:
                pass  # being read in another thread right now: the reader gets the error

    def __enter__(self) -> Self:
        return self.setup()

    def __exit__(self, *exc_info: object) -> None:
        self.free()

    def __repr__(self) -> str:
        if self._loaded is None:
            return f"<RWKV {self._path} (not loaded)>"
        return (
            f"<RWKV {self._path.name} v{self.arch} {self.data_type} n_layer={self.n_layer} "
            f"n_embed={self.n_embed} n_vocab={self.n_vocab} threads={self.threads} "
            f"concurrent={self.concurrent}>"
        )

    def _loaded_model(self) -> LoadedModel:
        loaded = self._loaded
        if loaded is None:
            raise UserError(
                f"the model {self._path} is not loaded: call setup() first "
                "(or use `with RWKV(...) as model:`)"
            )
        return loaded

    # ---- information ----

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    @property
    def path(self) -> Path:
        return self._path

    @property
    def threads(self) -> int:
        """Engine threads, as used: the request capped at the CPUs available."""
        return self._threads

    @property
    def threads_requested(self) -> int | None:
        """The `threads` argument as given (None: the default)."""
        return self._threads_requested

    @property
    def concurrent(self) -> int:
        return self._concurrent

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def gpu_layers(self) -> int:
        return self._loaded.gpu_layers if self._loaded is not None else 0

    @property
    def n_vocab(self) -> int:
        return self._loaded_model().info.n_vocab

    @property
    def n_layer(self) -> int:
        return self._loaded_model().info.n_layer

    @property
    def n_embed(self) -> int:
        return self._loaded_model().info.n_embed

    @property
    def state_len(self) -> int:
        return self._loaded_model().info.state_len

    @property
    def arch(self) -> str:
        """Architecture version from the file: "4", "5.1", "5.2", "6" or "7"."""
        return self._loaded_model().info.arch

    @property
    def data_type(self) -> str:
        return self._loaded_model().info.data_type

    @property
    def head_type(self) -> str:
        """The head's tensor type: "FP16" in rwkv.cpp's quantized files, the type given to
        `rwkv-cpp quantize --head` otherwise; GGUF files as stored ("Q6_K"...)."""
        return self._loaded_model().info.head_type

    @property
    def kernel_path(self) -> str:
        return self._loaded_model().info.kernel_path

    @property
    def engine(self) -> str:
        """The engine library and its kernel path, e.g. "rwkv-cpp native (avx2)"."""
        loaded = self._loaded_model()
        return f"{loaded.library.name} ({loaded.info.kernel_path})"

    @property
    def library(self) -> Library:
        return self._loaded_model().library

    @property
    def tokenizer(self) -> Tokenizer:
        return self._loaded_model().tokenizer

    @property
    def state_cache(self) -> StateCache:
        return self._cache

    def active_work_count(self) -> int:
        """Completions in the batch now (at most `concurrent`)."""
        loaded = self._loaded
        return loaded.scheduler.active() if loaded is not None else 0

    def pending_work_count(self) -> int:
        """Completions waiting in the queue for a place in the batch."""
        loaded = self._loaded
        return loaded.scheduler.pending() if loaded is not None else 0

    # ---- completion ----

    @overload
    def completion(
        self, prompt: str = ..., max_tokens: int = ..., temperature: float = ...,
        top_p: float = ..., top_k: int = ..., presence_penalty: float = ...,
        frequency_penalty: float = ..., stop: None | str | Sequence[str] = ...,
        seed: int | None = ..., stream_callback: StreamCallback | None = ...,
        init_state: np.ndarray | None = ..., stop_event: threading.Event | None = ...,
        should_stop: ShouldStop | None = ..., stream: Literal[False] = ...,
    ) -> CompletionResult: ...

    @overload
    def completion(
        self, prompt: str = ..., max_tokens: int = ..., temperature: float = ...,
        top_p: float = ..., top_k: int = ..., presence_penalty: float = ...,
        frequency_penalty: float = ..., stop: None | str | Sequence[str] = ...,
        seed: int | None = ..., stream_callback: None = ...,
        init_state: np.ndarray | None = ..., stop_event: threading.Event | None = ...,
        should_stop: ShouldStop | None = ..., *, stream: Literal[True],
    ) -> Iterator[CompletionChunk]: ...

    def completion(
        self,
        prompt: str = "",
        max_tokens: int = 64,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        stop: None | str | Sequence[str] = None,
        seed: int | None = None,
        stream_callback: StreamCallback | None = None,
        init_state: np.ndarray | None = None,
        stop_event: threading.Event | None = None,
        should_stop: ShouldStop | None = None,
        stream: bool = False,
    ) -> CompletionResult | Iterator[CompletionChunk]:
        """Continue `prompt` by up to `max_tokens` tokens.

        `temperature=0` is greedy; `seed` makes sampling reproducible. The completion ends
        before the first `stop` string (which is not included), at the end-of-text token, after
        `max_tokens`, or when `stop_event` is set / `should_stop()` returns true (the result
        then holds what was generated so far, finish_reason "cancelled").
        `stream_callback(text, completion_so_far)` receives the completion in pieces, never
        half a character; the pieces concatenate to the final completion. It runs on the
        calling thread, and the next token is sampled only once it has returned (as are
        `should_stop` calls, one before each token), so a slow callback holds back only its
        own completion.
        `stream=True` returns an iterator of `CompletionChunk`s instead of the result: the
        pieces, then a last chunk holding the result. The completion joins the batch when the
        iterator is first read and advances as it is read; closing it (or dropping it) ends
        the completion and frees its place.
        `init_state` starts from a state (e.g. from `get_state`) instead of the cache.
        `max_tokens=0` only evaluates (and caches) the prompt.

        Perf figures: `promptTime` is this request's own prompt processing (tokenizing, the
        cache lookup, and the engine calls that evaluated its prompt chunks; steps spent on
        other sequences between its chunks are not counted). `completionTime` is the wall time
        from the end of its prompt to its last token: every step it took part in, each of
        which advanced the whole batch, so beside other completions it is longer per token
        than alone while the model's total tokens per second is higher. Time in the queue
        counts in neither.
        """
        if stream and stream_callback is not None:
            raise InvalidArgument("stream=True returns the pieces; do not pass a stream_callback too")
        params = SamplingParams(temperature, top_p, top_k, presence_penalty, frequency_penalty)
        request = self._request(
            prompt, max_tokens, params, stop, seed, init_state, stop_event, should_stop
        )
        if stream:
            return self._open_stream(request)
        return self._complete(request, stream_callback)

    async def acompletion(
        self, prompt: str = "", stream: bool = False, **kwargs: Any
    ) -> CompletionResult | AsyncIterator[CompletionChunk]:
        """`completion` for asyncio: the completion joins the batch, and this task waits for
        it without blocking the event loop; cancelling the task ends it at once.

        A `stream_callback` runs on the event loop (the caller's thread). With `stream=True` it
        returns an async iterator of chunks (`async for`); leaving the loop early (or dropping
        the iterator) ends the completion and frees its place.
        """
        self._loaded_model()
        stream_callback = kwargs.pop("stream_callback", None)
        if stream and stream_callback is not None:
            raise InvalidArgument("stream=True returns the pieces; do not pass a stream_callback too")
        request = self._request_from_kwargs(prompt, kwargs)
        if stream:
            return self._arun(request)
        request.emit_chunks = stream_callback is not None
        chunks = self._arun(request)
        try:
            async for chunk in chunks:
                if chunk.result is not None:
                    return chunk.result
                stream_callback(chunk.text, chunk.completion)  # type: ignore[misc]
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]
        raise AssertionError("a completion ended without its result")  # pragma: no cover

    def preload_prompt(self, prefix: str, pin: bool = False) -> CompletionResult:
        """Evaluate `prefix` and keep its state in the cache; `pin=True` protects it from
        eviction. Later prompts starting with it skip those tokens."""
        if not self._cache.enabled:
            raise InvalidArgument("preload_prompt needs the state cache: state_cache_size is 0")
        request = self._request(prefix, 0, SamplingParams())
        request.pin = pin
        return self._complete(request)

    def get_state(self, text: str) -> np.ndarray:
        """The model state after `text` (a copy); pass it back as `init_state`."""
        result = self._complete(self._request(text, 0, SamplingParams()))
        assert result.state is not None
        return result.state

    def clear_cache(self, keep_pinned: bool = False) -> None:
        self._cache.clear(keep_pinned=keep_pinned)

    # ---- internals ----

    # ---- perplexity ----

    def perplexity(
        self,
        text: str,
        ctx: int = 512,
        reference: RWKV | str | os.PathLike | None = None,
        progress: PerplexityProgress | None = None,
        bos: int | None = None,
        max_chunks: int | None = None,
    ) -> PerplexityResult:
        """Perplexity on `text` as llama.cpp's perplexity tool computes it (core/perplexity.py):
        chunks of `ctx` tokens, each from a fresh state, scoring the second half of each.

        `reference`: another model file of the same model (or an `RWKV`): its next-token
        distributions are compared with ours on every scored token (mean KL divergence, top-1
        agreement). `bos`: a token put at the start of every chunk (llama.cpp does that for
        vocabularies that ask for it). `max_chunks`: at most that many chunks from the start
        (llama.cpp's --chunks). `progress(done, total, perplexity_so_far)` is called after each
        chunk.
        """
        tokens = self.tokenizer.encode(text)
        chunks = chunk_count(len(tokens), ctx)
        if max_chunks is not None:
            chunks = min(chunks, options.positive_int("max_chunks", max_chunks))
        other: RWKV | None = None
        if reference is not None:
            other = reference if isinstance(reference, RWKV) else RWKV(
                reference, threads=self.threads, tokenizer=self.tokenizer, state_cache_size=0)
            other.setup()
            if other.n_vocab != self.n_vocab:
                raise InvalidArgument(
                    f"the reference model {other.path} has n_vocab {other.n_vocab}, this one "
                    f"{self.n_vocab}: not a file of the same model"
                )
        acc = Accumulator()
        start = time.perf_counter()
        try:
            for c in range(chunks):
                chunk = np.array(tokens[c * ctx:(c + 1) * ctx], dtype=np.uint32)
                if bos is not None:
                    chunk[0] = bos
                first = ctx // 2
                logits = self._scored_logits(chunk, first)
                ref = other._scored_logits(chunk, first) if other is not None else None
                acc.add(logits, chunk[first + 1:].astype(np.int64), ref)
                if progress is not None:
                    progress(c + 1, chunks, acc.perplexity)
        finally:
            if other is not None and other is not reference:
                other.free()
        return acc.result(len(tokens), chunks, ctx, time.perf_counter() - start)

    def _scored_logits(self, chunk: np.ndarray, first: int) -> np.ndarray:
        """The logits after tokens first .. len(chunk)-2 of a chunk run from a fresh state.
        Runs on the engine thread between two batch steps (the context is whole-chunk work's
        alone meanwhile; running completions wait one chunk)."""

        def score(context: Context) -> np.ndarray:
            rows = chunk[first:-1]
            out = np.empty((len(rows), context.n_vocab), dtype=np.float32)
            state = np.empty(context.state_len, dtype=np.float32)
            if first > 0:
                context.eval_sequence(chunk[:first], None, state, None)
            else:
                context.init_state(state)
            if context.has_all_logits:
                context.eval_sequence_all_logits(rows, state, state, out)
            else:  # an rwkv.cpp library: one token at a time
                for i, token in enumerate(rows):
                    context.eval(int(token), state, state, out[i])
            return out

        return self._loaded_model().scheduler.call(score)

    def _request_from_kwargs(self, prompt: str, kwargs: dict[str, Any]) -> Request:
        sampling = {k: kwargs.pop(k) for k in list(kwargs) if k in SamplingParams.__dataclass_fields__}
        max_tokens = kwargs.pop("max_tokens", 64)
        stop = kwargs.pop("stop", None)
        seed = kwargs.pop("seed", None)
        init_state = kwargs.pop("init_state", None)
        stop_event = kwargs.pop("stop_event", None)
        should_stop = kwargs.pop("should_stop", None)
        if kwargs:
            raise TypeError(f"unexpected completion options: {', '.join(sorted(kwargs))}")
        return self._request(
            prompt, max_tokens, SamplingParams(**sampling), stop, seed, init_state, stop_event,
            should_stop,
        )

    def _request(
        self,
        prompt: str,
        max_tokens: int,
        params: SamplingParams,
        stop: None | str | Sequence[str] = None,
        seed: int | None = None,
        init_state: np.ndarray | None = None,
        stop_event: threading.Event | None = None,
        should_stop: ShouldStop | None = None,
    ) -> Request:
        """Check the options and tokenize the prompt."""
        loaded = self._loaded_model()
        max_tokens = options.max_tokens(max_tokens)
        prompt = options.prompt(prompt)
        params.check()
        stops = options.stop_strings(stop)
        seed = options.seed(seed)
        start_state = None
        if init_state is not None:
            start_state = options.init_state(init_state, loaded.info.state_len)
        started = time.perf_counter()
        tokens = loaded.tokenizer.encode(prompt) if prompt else []
        if not tokens and start_state is None:
            raise InvalidArgument(
                "the prompt is empty: give a prompt, or an init_state to start from", "prompt"
            )
        if not tokens and max_tokens > 0:
            raise InvalidArgument(
                "an empty prompt with init_state can only be used with max_tokens=0: "
                "sampling needs logits, which come from evaluating at least one token",
                "max_tokens",
            )
        sampler = None
        if max_tokens > 0:
            n_vocab = min(loaded.info.n_vocab, loaded.tokenizer.vocab_size)
            sampler = Sampler(n_vocab, params, seed)
        return Request(
            prompt=prompt,
            tokens=tokens,
            max_tokens=max_tokens,
            sampler=sampler,
            stops=stops,
            init_state=start_state,
            stop_events=() if stop_event is None else (stop_event,),
            should_stop=should_stop,
            prepare_seconds=time.perf_counter() - started,
        )

    def _submit(self, request: Request, loop: asyncio.AbstractEventLoop | None = None) -> Job:
        return self._loaded_model().scheduler.submit(request, loop)

    @staticmethod
    def _handled(job: Job, request: Request) -> None:
        """The caller has dealt with the last event: check should_stop, allow the next token."""
        if request.should_stop is not None and request.should_stop():
            job.cancel()
        job.grant()

    def _run(self, request: Request) -> Generator[CompletionChunk, None, None]:
        """The completion in the batch: its chunks, then a last chunk with the result.

        It is submitted when first read; closing the generator early takes it out."""
        job = self._submit(request)
        try:
            while True:
                if job.gated:
                    self._handled(job, request)
                chunk = _chunk_of(job.wait())
                if chunk is not None:
                    yield chunk
                    if chunk.result is not None:
                        return
        finally:
            job.abandon()

    async def _arun(self, request: Request) -> AsyncIterator[CompletionChunk]:
        """`_run` for asyncio: events are delivered on the event loop. Submitted when first
        read; leaving it early (aclose, or dropping it) takes the completion out."""
        job = self._submit(request, asyncio.get_running_loop())
        try:
            while True:
                if job.gated:
                    self._handled(job, request)
                chunk = _chunk_of(await job.await_event())
                if chunk is not None:
                    yield chunk
                    if chunk.result is not None:
                        return
        finally:
            job.abandon()

    def _complete(
        self, request: Request, stream_callback: StreamCallback | None = None
    ) -> CompletionResult:
        request.emit_chunks = stream_callback is not None
        with closing(self._run(request)) as chunks:
            for chunk in chunks:
                if chunk.result is not None:
                    return chunk.result
                if stream_callback is not None:
                    stream_callback(chunk.text, chunk.completion)
        raise AssertionError("a completion ended without its result")  # pragma: no cover

    def _open_stream(self, request: Request) -> Iterator[CompletionChunk]:
        stream = self._run(request)
        with self._streams_lock:
            self._streams.add(stream)
        return stream
