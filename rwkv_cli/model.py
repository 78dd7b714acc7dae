"""The RWKV class: load a model, run completions, cache prompt states, serve several threads.

    from rwkv_cli import RWKV

    with RWKV("model.bin") as model:
        result = model.completion("The capital of France is", max_tokens=16, temperature=0)
        print(result.completion, result.usage.promptTokens, result.perf.completionPerSecond)

Policy lives here; the math lives in the C engine behind `native.Library`. Per generated token
this layer does: one engine call (GIL released), sampling on the engine's logits buffer
(numpy, no Python loop over the vocabulary), an incremental UTF-8 decode and a stop-string
check on the few characters not yet streamed.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import threading
import time
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from . import native
from .perplexity import Accumulator, PerplexityProgress, PerplexityResult, chunk_count
from .sampling import Sampler, SamplingParams
from .state_cache import DEFAULT_MAX_BYTES, StateCache
from .tokenizer import Tokenizer, check_tokenizer_name, load_tokenizer

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["RWKV", "CompletionResult", "Perf", "PerplexityResult", "Usage", "physical_cores"]

DEFAULT_BATCH_SIZE = 64
DEFAULT_STATE_CACHE_SIZE = 50

StreamCallback = Callable[[str, str], Any]
FINISH_REASONS = ("length", "stop", "eos", "cancelled")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


class _CamelCaseFields:
    """Fields are snake_case; the original library's camelCase names read the same values."""

    def __getattr__(self, name: str) -> Any:
        aliases = type(self)._aliases()
        if name in aliases:
            return getattr(self, aliases[name])
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    @classmethod
    def _aliases(cls) -> dict[str, str]:
        return {_camel(f.name): f.name for f in fields(cls)}  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        return {_camel(f.name): getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]


@dataclass
class Usage(_CamelCaseFields):
    """Token counts: prompt tokens include the cached ones, which are also counted apart."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_cached: int = 0


@dataclass
class Perf(_CamelCaseFields):
    """Times in milliseconds and rates per second.

    "prompt" figures count only the prompt tokens evaluated (cached ones excluded); "full
    prompt" figures count every prompt token over the same time.
    """

    prompt_time: float = 0.0
    completion_time: float = 0.0
    total_time: float = 0.0
    time_per_prompt: float = 0.0
    time_per_completion: float = 0.0
    time_per_full_prompt: float = 0.0
    prompt_per_second: float = 0.0
    completion_per_second: float = 0.0
    full_prompt_per_second: float = 0.0


@dataclass
class CompletionResult:
    """What `completion` returns.

    `finish_reason`: "length" (max_tokens), "stop" (a stop string), "eos" (the end-of-text
    token) or "cancelled" (stop_event / should_stop). `tokens` are the sampled token ids.
    `state` is a copy of the model state after the prompt and the first `fed_tokens` of
    `tokens`: the token that ends a completion (by length, stop string or end of text) is
    sampled but never fed to the model, so `fed_tokens` is len(tokens) - 1 then, and
    len(tokens) for a cancelled one.
    """

    completion: str
    prompt: str
    usage: Usage
    perf: Perf
    finish_reason: str = "length"
    tokens: list[int] = field(default_factory=list, repr=False)
    state: np.ndarray | None = field(default=None, repr=False)
    fed_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "completion": self.completion,
            "prompt": self.prompt,
            "finishReason": self.finish_reason,
            "usage": self.usage.to_dict(),
            "perf": self.perf.to_dict(),
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, **kwargs)


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (SMT siblings counted once)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return max(1, (os.cpu_count() or 2) // 2)
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            package = (topology / "physical_package_id").read_text().strip()
            core = (topology / "core_id").read_text().strip()
        except OSError:
            return max(1, len(cpus))
        cores.add((package, core))
    return max(1, len(cores))


def _resolve_gpu_layers(gpu_offload: int | str, n_layer: int) -> int:
    if isinstance(gpu_offload, str):
        percent = float(gpu_offload.strip().rstrip("%"))
        return round(n_layer * percent / 100.0)
    return min(int(gpu_offload), n_layer)


def _check_gpu_offload(gpu_offload: int | str) -> None:
    if isinstance(gpu_offload, str):
        text = gpu_offload.strip()
        try:
            percent = float(text[:-1]) if text.endswith("%") else None
        except ValueError:
            percent = None
        if percent is None or not 0 <= percent <= 100:
            raise ValueError(
                f"gpu_offload must be a number of layers or a percentage like '50%', got {gpu_offload!r}"
            )
        return
    if isinstance(gpu_offload, bool) or not isinstance(gpu_offload, (int, np.integer)) or gpu_offload < 0:
        raise ValueError(f"gpu_offload must be a layer count >= 0 or a percentage string, got {gpu_offload!r}")


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _stop_strings(stop: None | str | Sequence[str]) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else list(stop)
    for s in stops:
        if not isinstance(s, str) or not s:
            raise ValueError(f"stop must be a non-empty string or a list of them, got {stop!r}")
    return stops


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of `text` that could still grow into a stop string."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


class _Worker:
    """One engine context with its own state and logits buffers."""

    __slots__ = ("ctx", "logits", "state")

    def __init__(self, ctx: native.Context, state_len: int, logits_len: int):
        self.ctx = ctx
        self.state = np.zeros(state_len, dtype=np.float32)
        self.logits = np.zeros(logits_len, dtype=np.float32)


def _free_contexts(library: native.Library, contexts: list[native.Context]) -> None:
    # Clones first: they borrow the first context's weights.
    while contexts:
        library.free(contexts.pop())


class RWKV:
    """An RWKV model in the native engine.

    Args:
        path: the model file (rwkv.cpp format).
        threads: engine threads per context (default: the physical cores available).
        gpu_offload: layers to offload, or a percentage string like "50%"; the engine must
            have a GPU backend (ours has none: any non-zero value is an error at setup).
        concurrent: contexts sharing one copy of the weights; that many completions run in
            parallel, others wait in a queue.
        batch_size: prompt tokens per sequence-mode chunk.
        state_cache_size: prompt states kept (0 or False disables the cache).
        tokenizer: "auto" (from n_vocab: 50277 -> 20B, 65536 -> World, 256 -> bytes), "20B",
            "world", "bytes", a tokenizer file (.json Hugging Face, .txt World vocabulary) or a
            `rwkv_cli.tokenizer.Tokenizer` object.
        state_cache_bytes: byte cap of the state cache (None: no cap).
        library: a `native.Library` (e.g. an external rwkv.cpp) instead of the default one.
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
        library: native.Library | None = None,
    ):
        self._path = Path(path)
        self._threads = physical_cores() if threads is None else _positive_int("threads", threads)
        _check_gpu_offload(gpu_offload)
        self._gpu_offload = gpu_offload
        self._concurrent = _positive_int("concurrent", concurrent)
        self._batch_size = _positive_int("batch_size", batch_size)
        if state_cache_size is True:
            state_cache_size = DEFAULT_STATE_CACHE_SIZE
        elif state_cache_size is False or state_cache_size is None:
            state_cache_size = 0
        if not isinstance(state_cache_size, (int, np.integer)) or state_cache_size < 0:
            raise ValueError(f"state_cache_size must be an integer >= 0, got {state_cache_size!r}")
        self._cache = StateCache(int(state_cache_size), state_cache_bytes)
        check_tokenizer_name(tokenizer)
        self._tokenizer_choice = tokenizer
        self._library = library

        self._lib: native.Library | None = None
        self._contexts: list[native.Context] = []
        self._workers: list[_Worker] = []
        self._free: list[_Worker] = []
        self._tokenizer: Tokenizer | None = None
        self._cond = threading.Condition()
        self._active = 0
        self._pending = 0
        self._gpu_layers = 0
        self._executor: ThreadPoolExecutor | None = None
        self._finalizer: weakref.finalize | None = None
        self._info: dict[str, Any] = {}

    # ---- lifecycle ----

    def setup(self) -> RWKV:
        """Load the model (and tokenizer) and create the worker contexts; idempotent."""
        if self._lib is not None:
            return self
        if not self._path.is_file():
            raise FileNotFoundError(f"model file not found: {self._path}")
        lib = self._library or native.default_library()
        ctx = lib.init_from_file(self._path, self._threads, 0)
        contexts = [ctx]
        try:
            n_layer = lib.get_n_layer(ctx)
            gpu_layers = _resolve_gpu_layers(self._gpu_offload, n_layer)
            if gpu_layers > 0:
                try:
                    lib.gpu_offload_layers(ctx, gpu_layers)
                except native.RWKVError as exc:
                    raise ValueError(
                        f"gpu_offload={self._gpu_offload!r}: the engine {lib.name} cannot offload "
                        f"layers to a GPU ({exc}); use gpu_offload=0, or an rwkv.cpp library built "
                        "with a GPU backend (RWKV_CPP_LIB)"
                    ) from exc
            n_vocab = lib.get_n_vocab(ctx)
            tokenizer = load_tokenizer(self._tokenizer_choice, n_vocab, self._path)
            if tokenizer.vocab_size > n_vocab:
                raise ValueError(
                    f"tokenizer {tokenizer.name} has {tokenizer.vocab_size} tokens but the model "
                    f"{self._path} has n_vocab={n_vocab}"
                )
            for _ in range(self._concurrent - 1):
                contexts.append(lib.clone_context(ctx, self._threads))
            state_len = lib.get_state_len(ctx)
            logits_len = lib.get_logits_len(ctx)
            self._info = {
                "n_vocab": n_vocab,
                "n_layer": n_layer,
                "n_embed": lib.get_n_embed(ctx),
                "state_len": state_len,
                "logits_len": logits_len,
                "arch": lib.get_arch_version(ctx),
                "data_type": lib.get_data_type_name(ctx),
                "kernel_path": lib.get_kernel_path(ctx),
            }
        except BaseException:
            _free_contexts(lib, contexts)
            raise
        self._gpu_layers = gpu_layers
        self._tokenizer = tokenizer
        self._contexts = contexts
        self._workers = [_Worker(c, state_len, logits_len) for c in contexts]
        with self._cond:
            self._free = list(reversed(self._workers))
        self._lib = lib
        self._finalizer = weakref.finalize(self, _free_contexts, lib, contexts)
        return self

    def free(self) -> None:
        """Release the contexts (waits for running completions); `setup()` can load again."""
        if self._lib is None:
            return
        with self._cond:
            while len(self._free) < len(self._workers):
                self._cond.wait()
            self._free = []
            self._lib = None
            self._cond.notify_all()  # completions still queued fail with a clear error
        if self._finalizer is not None:
            self._finalizer()  # frees the contexts exactly once
            self._finalizer = None
        self._workers = []
        self._contexts = []
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    def __enter__(self) -> Self:
        return self.setup()

    def __exit__(self, *exc_info: object) -> None:
        self.free()

    def __repr__(self) -> str:
        if self._lib is None:
            return f"<RWKV {self._path} (not loaded)>"
        return (
            f"<RWKV {self._path.name} v{self.arch} {self.data_type} n_layer={self.n_layer} "
            f"n_embed={self.n_embed} n_vocab={self.n_vocab} threads={self.threads} "
            f"concurrent={self.concurrent}>"
        )

    # ---- information ----

    def _loaded(self) -> native.Library:
        if self._lib is None:
            raise RuntimeError(
                f"the model {self._path} is not loaded: call setup() first "
                "(or use `with RWKV(...) as model:`)"
            )
        return self._lib

    def _get(self, key: str) -> Any:
        self._loaded()
        return self._info[key]

    @property
    def loaded(self) -> bool:
        return self._lib is not None

    @property
    def path(self) -> Path:
        return self._path

    @property
    def threads(self) -> int:
        return self._threads

    @property
    def concurrent(self) -> int:
        return self._concurrent

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def gpu_layers(self) -> int:
        return self._gpu_layers

    @property
    def n_vocab(self) -> int:
        return self._get("n_vocab")

    @property
    def n_layer(self) -> int:
        return self._get("n_layer")

    @property
    def n_embed(self) -> int:
        return self._get("n_embed")

    @property
    def state_len(self) -> int:
        return self._get("state_len")

    @property
    def arch(self) -> str:
        """Architecture version from the file: "4", "5.1", "5.2", "6" or "7"."""
        return self._get("arch")

    @property
    def data_type(self) -> str:
        return self._get("data_type")

    @property
    def kernel_path(self) -> str:
        return self._get("kernel_path")

    @property
    def engine(self) -> str:
        """The engine library and its kernel path, e.g. "rwkv-cpp native (avx2)"."""
        lib = self._loaded()
        return f"{lib.name} ({self.kernel_path})"

    @property
    def library(self) -> native.Library:
        return self._loaded()

    @property
    def tokenizer(self) -> Tokenizer:
        self._loaded()
        assert self._tokenizer is not None
        return self._tokenizer

    @property
    def state_cache(self) -> StateCache:
        return self._cache

    def active_work_count(self) -> int:
        """Completions running now."""
        with self._cond:
            return self._active

    def pending_work_count(self) -> int:
        """Completions waiting for a free context."""
        with self._cond:
            return self._pending

    # ---- workers ----

    def _acquire(self) -> _Worker:
        with self._cond:
            self._pending += 1
            try:
                while not self._free:
                    if self._lib is None:
                        raise RuntimeError(f"the model {self._path} was freed")
                    self._cond.wait()
            finally:
                self._pending -= 1
            self._active += 1
            return self._free.pop()

    def _release(self, worker: _Worker) -> None:
        with self._cond:
            self._active -= 1
            self._free.append(worker)
            self._cond.notify_all()

    # ---- completion ----

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
        should_stop: Callable[[], bool] | None = None,
    ) -> CompletionResult:
        """Continue `prompt` by up to `max_tokens` tokens.

        `temperature=0` is greedy; `seed` makes sampling reproducible. The completion ends
        before the first `stop` string (which is not included), at the end-of-text token, after
        `max_tokens`, or when `stop_event` is set / `should_stop()` returns true (the result
        then holds what was generated so far, finish_reason "cancelled").
        `stream_callback(text, completion_so_far)` receives the completion in pieces, never
        half a character; the pieces concatenate to the final completion.
        `init_state` starts from a state (e.g. from `get_state`) instead of the cache.
        `max_tokens=0` only evaluates (and caches) the prompt.
        """
        return self._complete(
            prompt,
            max_tokens=max_tokens,
            params=SamplingParams(temperature, top_p, top_k, presence_penalty, frequency_penalty),
            stop=stop,
            seed=seed,
            stream_callback=stream_callback,
            init_state=init_state,
            stop_event=stop_event,
            should_stop=should_stop,
        )

    async def acompletion(self, prompt: str = "", **kwargs: Any) -> CompletionResult:
        """`completion` for asyncio: runs on a worker thread; cancelling the task stops it."""
        self._loaded()
        with self._cond:
            if self._executor is None:
                # More threads than contexts: the surplus waits in our queue, where
                # pending_work_count() sees it.
                self._executor = ThreadPoolExecutor(
                    max_workers=max(8, 2 * self._concurrent), thread_name_prefix="rwkv"
                )
            executor = self._executor
        cancel = threading.Event()
        user_stop = kwargs.pop("should_stop", None)
        user_event = kwargs.pop("stop_event", None)

        def should_stop() -> bool:
            return (
                cancel.is_set()
                or (user_event is not None and user_event.is_set())
                or (user_stop is not None and bool(user_stop()))
            )

        call = functools.partial(self.completion, prompt, should_stop=should_stop, **kwargs)
        future = asyncio.get_running_loop().run_in_executor(executor, call)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            cancel.set()
            raise

    def preload_prompt(self, prefix: str, pin: bool = False) -> CompletionResult:
        """Evaluate `prefix` and keep its state in the cache; `pin=True` protects it from
        eviction. Later prompts starting with it skip those tokens."""
        if not self._cache.enabled:
            raise ValueError("preload_prompt needs the state cache: state_cache_size is 0")
        return self._complete(prefix, max_tokens=0, params=SamplingParams(), pin=pin)

    def get_state(self, text: str) -> np.ndarray:
        """The model state after `text` (a copy); pass it back as `init_state`."""
        result = self._complete(text, max_tokens=0, params=SamplingParams())
        assert result.state is not None
        return result.state

    def clear_cache(self, keep_pinned: bool = False) -> None:
        self._cache.clear(keep_pinned=keep_pinned)

    # ---- perplexity ----

    def perplexity(
        self,
        text: str,
        ctx: int = 512,
        reference: RWKV | str | os.PathLike | None = None,
        progress: PerplexityProgress | None = None,
        bos: int | None = None,
    ) -> PerplexityResult:
        """Perplexity on `text` as llama.cpp's perplexity tool computes it (rwkv_cli.perplexity):
        chunks of `ctx` tokens, each from a fresh state, scoring the second half of each.

        `reference`: another model file of the same model (or an `RWKV`): its next-token
        distributions are compared with ours on every scored token (mean KL divergence, top-1
        agreement). `bos`: a token put at the start of every chunk (llama.cpp does that for
        vocabularies that ask for it). `progress(done, total, perplexity_so_far)` is called
        after each chunk.
        """
        tokens = self.tokenizer.encode(text)
        chunks = chunk_count(len(tokens), ctx)
        other: RWKV | None = None
        if reference is not None:
            other = reference if isinstance(reference, RWKV) else RWKV(
                reference, threads=self.threads, tokenizer=self.tokenizer, state_cache_size=0)
            other.setup()
            if other.n_vocab != self.n_vocab:
                raise ValueError(
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
        """The logits after tokens first .. len(chunk)-2 of a chunk run from a fresh state."""
        lib = self._loaded()
        worker = self._acquire()
        try:
            rows = chunk[first:-1]
            out = np.empty((len(rows), self.n_vocab), dtype=np.float32)
            state = worker.state
            if first > 0:
                lib.eval_sequence(worker.ctx, chunk[:first], None, state, None)
            else:
                lib.init_state(worker.ctx, state)
            if lib.has_all_logits:
                lib.eval_sequence_all_logits(worker.ctx, rows, state, state, out)
            else:  # an rwkv.cpp library: one token at a time
                for i, token in enumerate(rows):
                    lib.eval(worker.ctx, int(token), state, state, out[i])
            return out
        finally:
            self._release(worker)

    def _check_init_state(self, init_state: Any) -> np.ndarray:
        state_len = self.state_len
        try:
            array = np.asarray(init_state, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"init_state must be a float32 array of {state_len} values") from exc
        if array.shape[0] != state_len:
            raise ValueError(
                f"init_state has {array.shape[0]} values, this model's state has {state_len} "
                f"(a state from another model?)"
            )
        return array

    def _complete(
        self,
        prompt: str,
        max_tokens: int,
        params: SamplingParams,
        stop: None | str | Sequence[str] = None,
        seed: int | None = None,
        stream_callback: StreamCallback | None = None,
        init_state: np.ndarray | None = None,
        stop_event: threading.Event | None = None,
        should_stop: Callable[[], bool] | None = None,
        pin: bool = False,
    ) -> CompletionResult:
        lib = self._loaded()
        tokenizer = self.tokenizer
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, (int, np.integer)) or max_tokens < 0:
            raise ValueError(f"max_tokens must be an integer >= 0, got {max_tokens!r}")
        if not isinstance(prompt, str):
            raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")  # noqa: TRY004
        params.check()
        stops = _stop_strings(stop)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise ValueError(f"seed must be an integer or None, got {seed!r}")
        start_state = None if init_state is None else self._check_init_state(init_state)

        started = time.perf_counter()
        tokens = tokenizer.encode(prompt) if prompt else []
        if not tokens and start_state is None:
            raise ValueError("the prompt is empty: give a prompt, or an init_state to start from")
        if not tokens and max_tokens > 0:
            raise ValueError(
                "an empty prompt with init_state can only be used with max_tokens=0: "
                "sampling needs logits, which come from evaluating at least one token"
            )
        sampler = None
        if max_tokens > 0:
            sampler = Sampler(min(self.n_vocab, tokenizer.vocab_size), params, seed)

        waited = time.perf_counter()
        worker = self._acquire()
        try:
            started += time.perf_counter() - waited  # queue time is not the model's time
            return self._run(
                lib, worker, tokenizer, prompt, tokens, start_state, max_tokens, sampler, stops,
                stream_callback, stop_event, should_stop, pin, started,
            )
        finally:
            self._release(worker)

    def _run(
        self,
        lib: native.Library,
        worker: _Worker,
        tokenizer: Tokenizer,
        prompt: str,
        tokens: list[int],
        start_state: np.ndarray | None,
        max_tokens: int,
        sampler: Sampler | None,
        stops: list[str],
        stream_callback: StreamCallback | None,
        stop_event: threading.Event | None,
        should_stop: Callable[[], bool] | None,
        pin: bool,
        started: float,
    ) -> CompletionResult:
        ctx, state, logits = worker.ctx, worker.state, worker.logits
        cache = self._cache

        # ---- prompt ----
        n_cached = 0
        state_in: np.ndarray | None = None
        if start_state is not None:
            state[:] = start_state
            state_in = state
        elif cache.enabled:
            entry = cache.lookup(tokens)
            if entry is not None and entry.logits is None:
                entry = cache.lookup(tokens, max_length=len(tokens) - 1)
            if entry is not None:
                n_cached = entry.n_tokens
                state[:] = entry.state
                state_in = state
                if n_cached == len(tokens):
                    logits[:] = entry.logits
        remaining = tokens[n_cached:]
        if len(remaining) == 1:
            lib.eval(ctx, remaining[0], state_in, state, logits)
        elif remaining:
            lib.eval_sequence_in_chunks(ctx, remaining, self._batch_size, state_in, state, logits)
        if start_state is None and cache.enabled and (remaining or pin):
            cache.put(tokens, state, logits, pin=pin)
        prompt_done = time.perf_counter()

        # ---- completion ----
        generated: list[int] = []
        fed = 0  # completion tokens evaluated (all but the last one sampled, at most)
        text = ""  # everything decoded so far
        emitted = 0  # characters of `text` streamed so far
        finish = "length"
        decoder = tokenizer.decoder()
        eos = tokenizer.eos_token
        logits_view = logits[: sampler.n_vocab] if sampler is not None else logits

        def emit(upto: int) -> None:
            nonlocal emitted
            if upto > emitted:
                piece = text[emitted:upto]
                emitted = upto
                if stream_callback is not None:
                    stream_callback(piece, text[:upto])

        end = None  # where the completion text ends when a stop string was found
        for index in range(max_tokens):
            if (stop_event is not None and stop_event.is_set()) or (
                should_stop is not None and should_stop()
            ):
                finish = "cancelled"
                break
            token = sampler.sample(logits_view)  # type: ignore[union-attr]
            generated.append(token)
            if token == eos:
                finish = "eos"
                break
            sampler.accept(token)  # type: ignore[union-attr]
            piece = decoder.feed(token)
            if piece:
                text += piece
                if stops:
                    window = text[max(0, emitted) :]
                    found = [i for i in (window.find(s) for s in stops) if i >= 0]
                    if found:
                        end = emitted + min(found)
                        finish = "stop"
                        break
                    emit(len(text) - _held_back(window, stops))
                else:
                    emit(len(text))
            if index == max_tokens - 1:
                break  # the last token is not fed: nothing would read its logits
            lib.eval(ctx, token, state, state, logits)
            fed += 1

        if end is None:
            text += decoder.flush()
            end = len(text)
            if stops:
                # Text held back for a stop string that never completed (a flushed replacement
                # character can only end it, so the search covers the tail only).
                window = text[emitted:]
                found = [i for i in (window.find(s) for s in stops) if i >= 0]
                if found:
                    end = emitted + min(found)
                    finish = "stop"
        emit(end)
        completion = text[:end]

        if start_state is None and cache.enabled and fed > 0:
            cache.put(tokens + generated[:fed], state, logits)
        finished = time.perf_counter()

        n_prompt = len(tokens)
        n_evaluated = n_prompt - n_cached
        prompt_ms = (prompt_done - started) * 1000.0
        completion_ms = (finished - prompt_done) * 1000.0
        n_completion = len(generated)
        usage = Usage(n_prompt, n_completion, n_prompt + n_completion, n_cached)
        perf = Perf(
            prompt_time=prompt_ms,
            completion_time=completion_ms,
            total_time=prompt_ms + completion_ms,
            time_per_prompt=prompt_ms / n_evaluated if n_evaluated else 0.0,
            time_per_completion=completion_ms / n_completion if n_completion else 0.0,
            time_per_full_prompt=prompt_ms / n_prompt if n_prompt else 0.0,
            prompt_per_second=n_evaluated * 1000.0 / prompt_ms if n_evaluated and prompt_ms else 0.0,
            completion_per_second=(
                n_completion * 1000.0 / completion_ms if n_completion and completion_ms else 0.0
            ),
            full_prompt_per_second=n_prompt * 1000.0 / prompt_ms if n_prompt and prompt_ms else 0.0,
        )
        return CompletionResult(
            completion=completion,
            prompt=prompt,
            usage=usage,
            perf=perf,
            finish_reason=finish,
            tokens=generated,
            state=state.copy(),
            fed_tokens=fed,
        )
