"""Batched decoding: n sequences advanced together against one sequence at a time, as JSON lines.

An RWKV sequence is only its state, so n streams can take one step together with
`rwkv_eval_batch`: one pass over the weights for n tokens, the products run as
matrix-matrix products. This measures, for 1, 2, 4, 8 and 16 sequences (each with its
logits, as generation needs them):

- `step_ms`: one batched step (n tokens), median over `--runs` runs of `--steps` steps;
- `aggregate_tokens_per_s` = n / step, and `per_stream_ms_per_token` = the step itself;
- `speedup_vs_single`: aggregate tokens/s over single-sequence `rwkv_eval` tokens/s, the
  latter measured in the same run, interleaved with the batched runs;
- `head_ms`: the part of a step spent in the head (a step with every logits_out NULL
  subtracted), the one product whose rows are 65536 x 768 FP16 at this shape.

The single-sequence baseline is a line of its own (`"mode": "rwkv_eval"`).

    python benchmarks/batch.py                          # RWKV-7 0.1B shape, Q8_0, 2 threads
    python benchmarks/batch.py --type Q4_0 --threads 1 --sequences 1,4,16,64
    python benchmarks/batch.py --type Q8_0+Q8_0 --threads 1 --cpu-time   # a Q8_0 head too

Models are random-weight files of the real shape (benchmarks/engine.py writes and caches
them). The machine is shared: report medians and rerun when it is quiet.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

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


# One entry per way of running n streams. The C level is the engine alone; the rows through
# `RWKV` (the core's scheduler with n concurrent completions) and the time to first token of a
# long prompt arriving while streams generate belong here too, beside it.
LEVELS = {"c": measure_c_level}


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
    parser.add_argument("--steps", type=int, default=16, help="steps per run")
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
