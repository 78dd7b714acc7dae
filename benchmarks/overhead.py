"""Per-token time spent outside the native eval call (sampling, decoding, bookkeeping).

    python benchmarks/overhead.py                 # JSON on stdout
    python benchmarks/overhead.py --tokens 300 --runs 5

The model is a random-weight RWKV file with a 65536-token vocabulary (World tokenizer) and tiny
layers, so the engine's share is small and the Python layer's share is what is measured. The
engine is wrapped in a proxy that timestamps every eval call (`rwkv_eval_batch` of one
sequence, as the scheduler makes them; `rwkv_eval` on an engine without it); for each
generated token the overhead is the gap between the end of one eval call and the start of the
next (everything `RWKV.completion` does per token: the scheduler's step, sampling on the
logits, incremental decoding, stop strings, streaming). Reported: the median and 90th percentile of those gaps per sampling setting, and
the mean per token including once-per-completion work (cache store, state copy).

Random weights give flat next-token distributions, the worst case for top-p (a trained model
puts most of the mass on a few tokens); the "top_p peaked" row sharpens the logits 8x after
each eval to show the trained-model case.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from rwkv_cli import RWKV
from rwkv_cli import engine as native
from rwkv_cli.formats.synthetic import write_random_model

PROMPT = "User: Tell me a story about a dragon who learned to fly.\n\nAssistant:"


class TimedLibrary:
    """The engine, with the start and end time of every eval call recorded."""

    def __init__(self, library: native.Library, sharpen: float = 1.0):
        self._library = library
        self.sharpen = sharpen
        self.calls: list[tuple[float, float]] = []

    def __getattr__(self, name):
        return getattr(self._library, name)

    def eval(self, ctx, token, state_in, state_out, logits_out):
        start = time.perf_counter()
        self._library.eval(ctx, token, state_in, state_out, logits_out)
        if self.sharpen != 1.0 and logits_out is not None:
            logits_out *= self.sharpen
        self.calls.append((start, time.perf_counter()))

    def eval_batch(self, ctx, tokens, states_in, states_out, logits_out):
        start = time.perf_counter()
        self._library.eval_batch(ctx, tokens, states_in, states_out, logits_out)
        if self.sharpen != 1.0:
            for logits in logits_out or ():
                if logits is not None:
                    logits *= self.sharpen
        self.calls.append((start, time.perf_counter()))

    def eval_sequence_in_chunks(self, ctx, tokens, chunk_size, state_in, state_out, logits_out):
        self._library.eval_sequence_in_chunks(ctx, tokens, chunk_size, state_in, state_out, logits_out)
        if self.sharpen != 1.0 and logits_out is not None:
            logits_out *= self.sharpen


SETTINGS = {
    "greedy": {"temperature": 0.0},
    "temperature 1": {"temperature": 1.0},
    "top_k 40": {"temperature": 1.0, "top_k": 40},
    "top_p 0.7 (chat default)": {"temperature": 1.0, "top_p": 0.7},
    "top_p 0.7 + penalties + stop + stream": {
        "temperature": 1.0,
        "top_p": 0.7,
        "presence_penalty": 0.4,
        "frequency_penalty": 0.4,
        "stop": ["\n\nUser:", "\n\nAssistant:"],
        "stream_callback": lambda text, so_far: None,
    },
    "top_p 0.7 peaked": {"temperature": 1.0, "top_p": 0.7, "_sharpen": 8.0},
}


def measure(model_path: Path, settings: dict, tokens: int, runs: int, threads: int) -> dict:
    options = dict(settings)
    sharpen = options.pop("_sharpen", 1.0)
    library = TimedLibrary(native.default_library(), sharpen)
    gaps: list[float] = []
    evals: list[float] = []
    means: list[float] = []
    with RWKV(model_path, threads=threads, library=library, state_cache_size=0) as model:
        model.completion(PROMPT, max_tokens=8, seed=0, **options)  # warm-up
        for run in range(runs):
            library.calls.clear()
            result = model.completion(PROMPT, max_tokens=tokens, seed=run, **options)
            calls = library.calls
            gaps += [(b[0] - a[1]) * 1000.0 for a, b in zip(calls, calls[1:])]
            eval_ms = sum((end - start) for start, end in calls) * 1000.0
            evals += [(end - start) * 1000.0 for start, end in calls]
            generated = result.usage.completionTokens
            means.append((result.perf.completionTime - eval_ms) / max(generated, 1))
    gaps.sort()
    return {
        "settings": {k: v for k, v in settings.items() if k != "stream_callback"}
        | ({"stream_callback": True} if "stream_callback" in settings else {}),
        "tokens_measured": len(gaps),
        "overhead_ms_median": round(statistics.median(gaps), 4),
        "overhead_ms_p90": round(gaps[int(0.9 * (len(gaps) - 1))], 4),
        "overhead_ms_mean_incl_per_completion": round(statistics.mean(means), 4),
        "eval_ms_median": round(statistics.median(evals), 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=200, help="tokens generated per run")
    parser.add_argument("--runs", type=int, default=3, help="completions per setting")
    parser.add_argument("--arch", default="4", help="architecture of the random model")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--embed", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=65536)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", type=Path, help="use this model file instead of a random one")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as folder:
        path = args.model
        if path is None:
            path = write_random_model(
                Path(folder) / "overhead.bin", args.arch, args.layers, args.embed, args.vocab
            )
        results = {name: measure(path, s, args.tokens, args.runs, args.threads) for name, s in SETTINGS.items()}
        with RWKV(path, threads=args.threads) as model:
            shape = {
                "arch": model.arch, "n_layer": model.n_layer, "n_embed": model.n_embed,
                "n_vocab": model.n_vocab, "data_type": model.data_type,
                "tokenizer": model.tokenizer.name, "engine": model.engine,
            }
    report = {
        "benchmark": "per-token overhead outside the native eval call",
        "command": "python benchmarks/overhead.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "target_ms_median": 0.2,
        "model": shape,
        "tokens_per_run": args.tokens,
        "runs": args.runs,
        "results": results,
        "machine": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "cpu_count": os.cpu_count(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        },
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
