"""Batched decoding: n sequences advanced together against one sequence at a time, as JSON lines.

An RWKV sequence is only its state, so n streams can take one step together with
`rwkv_eval_batch`: one pass over the weights for n tokens, the products run as
matrix-matrix products. Three levels (`--levels`, default all):

- `c`: the engine alone, for 1, 2, 4, 8 and 16 sequences (each with its logits, as
  generation needs them): `step_ms` (one batched step of n tokens, median over `--runs` runs
  of `--steps` steps), `aggregate_tokens_per_s` = n / step, `per_stream_ms_per_token` = the
  step itself, `speedup_vs_single` against single-sequence `rwkv_eval` measured in the same
  run, interleaved (a line of its own, `"mode": "rwkv_eval"`), and `head_ms` (the step minus
  the same step with every logits_out NULL: the 65536 x 768 FP16 head at this shape).
- `rwkv`: n concurrent greedy completions of `--tokens` tokens through `RWKV`, one thread
  each (the core's scheduler: one engine thread, one batch): `step_ms` (the median interval
  between steps that advanced all n streams: one token of each), `aggregate_tokens_per_s`,
  `speedup_vs_single` (against one completion through RWKV in the same run, interleaved),
  `per_stream_ms_per_token` (each completion's own perf.timePerCompletion, median over the
  streams) and `end_to_end_tokens_per_s` (all tokens over the wall time from submission to the
  last result, prompts included); then a `"mode": "memory"` line: what the largest n running
  completions add to the process (resident set growth, tracemalloc peak) against their
  states and logits, and what one cloned context adds (the old design cloned one per
  completion).
- `ttft`: a `--prompt-tokens` prompt (1000) arriving while `--streams` completions (8)
  generate, for each batch_size in `--chunks` (the prompt tokens read per step), and the
  same prompt alone: `ttft_ms` (submission to its first token), `prompt_ms` (its own prompt
  processing), and the streams' time between tokens before it arrived (`tbt_before_ms`) and
  while it was read (`tbt_during_ms`).

    python benchmarks/batch.py                          # RWKV-7 0.1B shape, Q8_0, 2 threads
    python benchmarks/batch.py --levels c --type Q4_0 --threads 1 --sequences 1,4,16,64
    python benchmarks/batch.py --levels ttft --chunks 32,64,128,256
    python benchmarks/batch.py --levels c --type Q8_0+Q8_0 --threads 1 --cpu-time   # a Q8_0 head too

Models are random-weight files of the real shape (benchmarks/engine.py writes and caches
them); the RWKV levels use the World tokenizer without its end-of-text token (a random
model's greedy choice may be token 0, which would end a stream early). The machine is
shared: report medians and rerun when it is quiet.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np

from rwkv_cli import RWKV
from rwkv_cli import engine as native

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine import SHAPES, model_file  # a sibling script, not a package

PROMPT_TOKENS = 16  # history each sequence has before the measured steps


class CLevel:
    """Steps through the C API: rwkv_eval for one sequence, rwkv_eval_batch for n."""

    def __init__(self, lib: native.Library, path: Path, threads: int, max_sequences: int,
                 cpu_clock: bool = False):
        self.lib = lib
        # one engine thread runs on the calling thread: its CPU time ignores other load
        self.clock = time.thread_time if cpu_clock and threads == 1 else time.perf_counter
        self.ctx = lib.init_from_file(path, threads)
        self.kernels = lib.get_kernel_path(self.ctx)
        n_state, self.n_vocab = lib.get_state_len(self.ctx), lib.get_logits_len(self.ctx)
        rng = np.random.default_rng(0)
        self.states = [np.empty(n_state, np.float32) for _ in range(max_sequences)]
        for state in self.states:
            lib.eval_sequence(
                self.ctx, rng.integers(0, self.n_vocab, PROMPT_TOKENS).tolist(), None, state, None
            )
        self.logits = [np.empty(self.n_vocab, np.float32) for _ in range(max_sequences)]
        self.tokens = rng.integers(0, self.n_vocab, size=(64, max_sequences)).tolist()

    def single_step_s(self, steps: int) -> float:
        """Seconds per token of one sequence through rwkv_eval."""
        state, logits = self.states[0], self.logits[0]
        start = self.clock()
        for step in range(steps):
            self.lib.eval(self.ctx, self.tokens[step % 64][0], state, state, logits)
        return (self.clock() - start) / steps

    def batch_step_s(self, n: int, steps: int, with_logits: bool = True) -> float:
        """Seconds per step of n sequences through rwkv_eval_batch."""
        states = self.states[:n]
        logits = self.logits[:n] if with_logits else None
        start = self.clock()
        for step in range(steps):
            self.lib.eval_batch(self.ctx, self.tokens[step % 64][:n], states, states, logits)
        return (self.clock() - start) / steps

    def free(self) -> None:
        self.lib.free(self.ctx)


def measure_c_level(args, path: Path, sizes: list[int]) -> list[dict]:
    level = CLevel(native.default_library(), path, args.threads, max(sizes), args.cpu_time)
    try:
        level.batch_step_s(max(sizes), 2)  # warm-up: page the weights in
        single, steps, heads = [], {n: [] for n in sizes}, {n: [] for n in sizes}
        for _ in range(args.runs):
            single.append(level.single_step_s(args.steps))
            for n in sizes:
                steps[n].append(level.batch_step_s(n, args.steps))
                heads[n].append(steps[n][-1] - level.batch_step_s(n, args.steps, with_logits=False))
        common = {
            "level": "C",
            "shape": args.shape,
            "arch": args.arch,
            "type": args.type,
            "threads": args.threads,
            "kernels": level.kernels,
            "runs": args.runs,
            "steps_per_run": args.steps,
            "clock": "thread_cpu" if args.cpu_time and args.threads == 1 else "wall",
        }
        single_s = statistics.median(single)
        rows = [
            {
                **common,
                "mode": "rwkv_eval",
                "sequences": 1,
                "ms_per_token": round(single_s * 1e3, 3),
                "tokens_per_s": round(1 / single_s, 1),
            }
        ]
        for n in sizes:
            step_s = statistics.median(steps[n])
            rows.append(
                {
                    **common,
                    "mode": "rwkv_eval_batch",
                    "sequences": n,
                    "step_ms": round(step_s * 1e3, 3),
                    "aggregate_tokens_per_s": round(n / step_s, 1),
                    "per_stream_ms_per_token": round(step_s * 1e3, 3),
                    "speedup_vs_single": round(single_s * n / step_s, 2),
                    "head_ms": round(statistics.median(heads[n]) * 1e3, 3),
                }
            )
        return rows
    finally:
        level.free()


# ---- through RWKV: the core's scheduler ----


def rss_bytes() -> int:
    """Resident set of this process (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """The largest resident set seen while the block runs, sampled every few milliseconds."""

    def __enter__(self):
        self.peak = rss_bytes()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.wait(0.005):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def world_tokenizer_without_end():
    """The World tokenizer with no end-of-text token: a random-weight model's greedy choice
    may be token 0, which would end a stream early and shrink the batch being measured."""
    from rwkv_cli.core.tokenizer import load_tokenizer

    tokenizer = load_tokenizer("world")
    tokenizer.eos_token = None
    return tokenizer


def open_model(args, path: Path, concurrent: int, tokenizer, batch_size: int = 64) -> RWKV:
    model = RWKV(
        path, threads=args.threads, concurrent=concurrent, tokenizer=tokenizer,
        batch_size=batch_size, state_cache_size=0,
    ).setup()
    model._loaded.scheduler.step_log = collections.deque()
    return model


def run_in_threads(calls: list) -> list:
    results: list = [None] * len(calls)

    def run(i: int) -> None:
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def full_step_seconds(steps: list, rows: int) -> list[float]:
    """Intervals between consecutive steps that advanced `rows` streams and read no prompt:
    each is one token of every stream."""
    return [
        b.ended - a.ended
        for a, b in zip(steps, steps[1:])
        if a.decode_rows == b.decode_rows == rows and not b.prompt_tokens
    ]


def streams_once(model: RWKV, n: int, tokens: int) -> dict:
    """n concurrent greedy completions of `tokens` tokens each, from n threads."""
    log = model._loaded.scheduler.step_log
    log.clear()
    calls = [
        lambda i=i: model.completion(
            f"Stream {i} of the benchmark:", max_tokens=tokens, temperature=0
        )
        for i in range(n)
    ]
    started = time.perf_counter()
    results = run_in_threads(calls)
    wall = time.perf_counter() - started
    generated = sum(r.usage.completionTokens for r in results)
    intervals = full_step_seconds(list(log), n)
    return {
        "step_s": statistics.median(intervals) if intervals else float("nan"),
        "end_to_end_tokens_per_s": generated / wall,
        "per_stream_ms": statistics.median(r.perf.timePerCompletion for r in results),
    }


def memory_of_streams(args, path: Path, n: int, tokenizer) -> dict:
    """What n running completions add to the process, on a fresh model (one completion run
    first, so the weights and the tokenizer are in): the resident set's growth while they
    run, and the peak of the Python and numpy allocations (tracemalloc) they make."""
    model = open_model(args, path, n, tokenizer)
    try:
        model.completion("Warm-up:", max_tokens=4, temperature=0)
        calls = [
            lambda i=i: model.completion(f"Stream {i}:", max_tokens=16, temperature=0)
            for i in range(n)
        ]
        before = rss_bytes()
        tracemalloc.start()
        try:
            with PeakRSS() as peak:
                run_in_threads(calls)
            traced = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        return {"rss_added": peak.peak - before, "traced": traced}
    finally:
        model.free()


def clone_context_bytes(path: Path, threads: int) -> int:
    """What one cloned context adds to the resident set once it has evaluated a prompt chunk
    (its scratch and threads): the cost of a context per completion, the design replaced."""
    lib = native.default_library()
    ctx = lib.init_from_file(path, threads)
    state = np.empty(lib.get_state_len(ctx), np.float32)
    logits = np.empty(lib.get_logits_len(ctx), np.float32)
    lib.eval_sequence(ctx, list(range(64)), None, state, logits)
    before = rss_bytes()
    clone = lib.clone_context(ctx, threads)
    lib.eval_sequence(clone, list(range(64)), None, state, logits)
    added = rss_bytes() - before
    lib.free(clone)
    lib.free(ctx)
    return added


def measure_rwkv_level(args, path: Path, sizes: list[int]) -> list[dict]:
    """n concurrent completions through RWKV: steady-state aggregate tokens/s (n over the
    median interval of the steps that advanced all n), each stream's own ms/token (its
    perf.timePerCompletion, median over streams), end to end tokens/s (everything generated
    over the wall time from submission to the last result); then what the largest n adds to
    the process's memory, beside what a cloned context (one per completion before) adds."""
    tokenizer = world_tokenizer_without_end()
    runs: dict[int, list[dict]] = {n: [] for n in sizes}
    # One model for every n: n completions on it are a batch of n, whatever its `concurrent`
    # beyond n, and its weights are paged in once (a second mapping would count twice in RSS).
    model = open_model(args, path, max(sizes), tokenizer)
    try:
        streams_once(model, max(sizes), 4)  # warm-up: page the weights in
        for _ in range(args.runs):
            for n in sizes:
                runs[n].append(streams_once(model, n, args.tokens))
        state_len, n_vocab, kernels = model.state_len, model.n_vocab, model.kernel_path
    finally:
        model.free()
    memory = memory_of_streams(args, path, max(sizes), tokenizer)
    common = {
        "level": "RWKV",
        "shape": args.shape,
        "arch": args.arch,
        "type": args.type,
        "threads": args.threads,
        "kernels": kernels,
        "runs": args.runs,
        "tokens_per_stream": args.tokens,
    }

    def median(n: int, key: str) -> float:
        return statistics.median(run[key] for run in runs[n])

    single_s = median(1, "step_s") if 1 in runs else None
    rows = []
    for n in sizes:
        step_s = median(n, "step_s")
        row = {
            **common,
            "mode": "completions",
            "sequences": n,
            "step_ms": round(step_s * 1e3, 3),
            "aggregate_tokens_per_s": round(n / step_s, 1),
            "per_stream_ms_per_token": round(median(n, "per_stream_ms"), 3),
            "end_to_end_tokens_per_s": round(median(n, "end_to_end_tokens_per_s"), 1),
        }
        if single_s is not None:
            row["speedup_vs_single"] = round(single_s * n / step_s, 2)
        rows.append(row)
    n = max(sizes)
    rows.append(
        {
            **common,
            "mode": "memory",
            "sequences": n,
            "rss_added_mb": round(memory["rss_added"] / 2**20, 1),
            "traced_peak_mb": round(memory["traced"] / 2**20, 1),
            "states_and_logits_mb": round(n * (state_len + n_vocab) * 4 / 2**20, 1),
            "clone_context_mb": round(clone_context_bytes(path, args.threads) / 2**20, 1),
        }
    )
    return rows


def long_prompt_text(tokenizer, n_tokens: int) -> str:
    """Text that the tokenizer reads as exactly n_tokens tokens (words joined until long
    enough, then cut token by token)."""
    words = ("the", "dragon", "flew", "over", "green", "hills", "and", "a", "lantern", "maker")
    text, i = "", 0
    while len(tokenizer.encode(text)) < n_tokens:
        text += " " + words[i % len(words)] + str(i % 7)
        i += 1
    while len(tokenizer.encode(text)) > n_tokens:
        text = text[:-1]
    return text


def ttft_once(model: RWKV, streams: int, prompt: str) -> dict:
    """Time to first token of `prompt` arriving while `streams` completions generate, and
    those streams' time between tokens before and while it is read."""
    log = model._loaded.scheduler.step_log
    log.clear()
    enough = threading.Event()
    calls = [
        lambda i=i: model.completion(
            f"Stream {i} of the benchmark:", max_tokens=1_000_000, temperature=0, stop_event=enough
        )
        for i in range(streams)
    ]
    runner = threading.Thread(target=run_in_threads, args=(calls,)) if streams else None
    if runner is not None:
        runner.start()
        while sum(step.decode_rows == streams for step in list(log)) < 20:
            time.sleep(0.01)
    first = len(log)
    started = time.perf_counter()
    result = model.completion(prompt, max_tokens=1, temperature=0)
    ttft = time.perf_counter() - started
    enough.set()
    if runner is not None:
        runner.join()
    steps = list(log)
    before, during = steps[: first + 1], steps[first:]
    row = {"ttft_ms": ttft * 1e3, "prompt_ms": result.perf.promptTime,
           "prompt_tokens": result.usage.promptTokens}
    if streams:
        row["tbt_before_ms"] = statistics.median(full_step_seconds(before, streams)) * 1e3
        row["tbt_during_ms"] = statistics.median(
            b.ended - a.ended for a, b in zip(during, during[1:]) if b.prompt_tokens
        ) * 1e3
    return row


def measure_time_to_first_token(args, path: Path, sizes: list[int]) -> list[dict]:
    """A prompt of --prompt-tokens tokens arriving while --streams completions generate, for
    each --chunk (batch_size: the prompt tokens read per step), against the same prompt
    alone: its time to first token, and the streams' time between tokens before and while
    it is read."""
    tokenizer = world_tokenizer_without_end()
    prompt = long_prompt_text(tokenizer, args.prompt_tokens)
    chunks = [int(c) for c in args.chunks.split(",")]
    runs: dict[tuple[int, int], list[dict]] = {}
    models = {c: open_model(args, path, args.streams + 1, tokenizer, c) for c in chunks}
    try:
        ttft_once(models[chunks[0]], 0, prompt)  # warm-up
        for run in range(args.runs):
            for c in chunks if run % 2 == 0 else chunks[::-1]:
                # alone and beside the streams in turn, each first in every other run: the
                # shared machine's load drifts within a run
                for streams in (0, args.streams) if run % 2 == 0 else (args.streams, 0):
                    runs.setdefault((c, streams), []).append(ttft_once(models[c], streams, prompt))
        kernels = models[chunks[0]].kernel_path
    finally:
        for model in models.values():
            model.free()
    rows = []
    for (c, streams), measured in sorted(runs.items()):
        row = {
            "level": "RWKV",
            "mode": "time_to_first_token",
            "shape": args.shape,
            "arch": args.arch,
            "type": args.type,
            "threads": args.threads,
            "kernels": kernels,
            "runs": args.runs,
            "batch_size": c,
            "streams": streams,
        }
        for key in measured[0]:
            row[key] = round(statistics.median(m[key] for m in measured), 3)
        rows.append(row)
    return rows


# One entry per way of running n streams: the engine alone (`rwkv_eval_batch`), the core's
# scheduler with n concurrent completions, and the time to first token of a long prompt
# arriving while streams generate.
LEVELS = {"c": measure_c_level, "rwkv": measure_rwkv_level, "ttft": measure_time_to_first_token}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", default="169M", choices=list(SHAPES))
    parser.add_argument(
        "--arch", default="7", help="architecture of the random model (4, 5.2, 6, 7)"
    )
    parser.add_argument("--vocab", type=int, default=65536)
    parser.add_argument("--type", default="Q8_0",
                        help="tensor type of the model; BODY+HEAD (Q8_0+Q8_0) quantizes the head too")
    parser.add_argument("--cpu-time", action="store_true",
                        help="with --threads 1: time by the thread's CPU time (steadier on a shared machine)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sequences", default="1,2,4,8,16", help="comma list of batch sizes")
    parser.add_argument(
        "--levels", default=",".join(LEVELS), help=f"comma list of {', '.join(LEVELS)}"
    )
    parser.add_argument(
        "--runs", type=int, default=5, help="runs per figure (the median is reported)"
    )
    parser.add_argument("--steps", type=int, default=16, help="steps per run (C level)")
    parser.add_argument(
        "--tokens", type=int, default=64, help="tokens per completion (RWKV level)"
    )
    parser.add_argument(
        "--streams", type=int, default=8, help="streams generating while the long prompt is read"
    )
    parser.add_argument("--prompt-tokens", type=int, default=1000, help="the long prompt's length")
    parser.add_argument(
        "--chunks", default="64,256", help="comma list of batch_size values for the ttft level"
    )
    parser.add_argument(
        "--cache-dir", default=os.path.join(tempfile.gettempdir(), "rwkv-bench-models")
    )
    args = parser.parse_args(argv)

    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    path = model_file(cache, args.arch, args.shape, args.type, args.vocab)
    sizes = [int(n) for n in args.sequences.split(",")]
    for name in args.levels.split(","):
        if name not in LEVELS:
            parser.error(f"unknown level {name!r}; known: {', '.join(LEVELS)}")
        for row in LEVELS[name](args, path, sizes):
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
