"""Engine speed against the machine's own limits, as JSON lines.

Decoding a token reads every weight once, so its floor is bytes of weights per token divided
by the machine's read bandwidth; this measures that bandwidth in the same run (a streaming
read of a 1 GiB buffer with the same thread count) and reports the engine's effective GB/s
as a fraction of it. Prompt processing (sequence mode, 64-token chunks) is arithmetic: it
is reported in GFLOP/s next to numpy's FP32 matrix products of the same shapes, measured in
the same run with the same thread count. Both baselines are measured just before and just
after each engine measurement and the better of the two is used (the machine is shared, so
a busy moment during a baseline cannot flatter the engine).

Models are random-weight files of the real shapes, written by our writer (FP16) and
quantized by our quantizer, cached in --cache-dir. The types only GGUF files hold (BF16, Q2_K,
Q3_K, Q4_K, Q5_K, Q6_K) are written as llama.cpp's GGUF of the same weights by the tests' GGUF
writer (tests/gguf_writer.py, needs the `gguf` package of the test extra), every matrix
including the embedding and the head in that type.

    python benchmarks/engine.py                                   # 169M, 4 types, 2 and 1 threads
    python benchmarks/engine.py --shapes 1.5B --types Q5_1 --threads 2
    python benchmarks/engine.py --arch 7 --vocab 65536 --types Q4_K,Q5_K,Q6_K --threads 2
    python benchmarks/engine.py --arch 7 --vocab 65536 --types Q4_0,Q4_0+Q8_0  # + a Q8_0 head
    python benchmarks/engine.py --table results.jsonl           # JSON lines -> markdown table
"""

from __future__ import annotations

import os

# BLAS threads of this process would spin on the cores the engine measures on; numpy's own
# rate is measured in a subprocess with its own thread count.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from rwkv_cli import engine as native
from rwkv_cli.formats import modelfile
from rwkv_cli.formats.synthetic import random_tensors, write_random_model

SHAPES = {"169M": (12, 768), "430M": (24, 1024), "1.5B": (24, 2048), "3B": (32, 2560)}
TYPES = ["FP16", "Q8_0", "Q5_1", "Q4_0"]
GGUF_TYPES = ("BF16", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
CHUNK = 64  # tokens per sequence-mode call, the engine's chunk


def gguf_model(cache: Path, arch: str, shape: str, dtype: str, n_vocab: int, stem: str) -> Path:
    """The same random weights as the .bin files (seed 0), as llama.cpp's GGUF of one type."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from gguf_writer import default_kind, write_rwkv_gguf  # the tests' writer: public format facts

    if arch not in ("6", "7"):
        raise SystemExit(f"{dtype} needs a GGUF file, which llama.cpp writes for --arch 6 and 7 only")
    target = cache / f"{stem}-{dtype}.gguf"
    if not target.exists():
        n_layer, n_embed = SHAPES[shape]
        partial = target.with_suffix(".partial")
        write_rwkv_gguf(partial, arch, random_tensors(arch, n_layer, n_embed, n_vocab), n_layer, n_embed,
                        64, kind_of=lambda key, s: default_kind(key, s, dtype), keep_values=False)
        partial.rename(target)
    return target


def model_file(cache: Path, arch: str, shape: str, dtype: str, n_vocab: int) -> Path:
    """The cached model file of one shape and type (written and quantized on first use).
    "Q4_0+Q8_0": a Q4_0 file whose head is Q8_0 too (`rwkv-cpp quantize --head Q8_0`)."""
    n_layer, n_embed = SHAPES[shape]
    body, _, head = dtype.partition("+")
    stem = f"rwkv{arch}-{shape}-v{n_vocab}"
    source = cache / f"{stem}-FP16.bin"
    if not source.exists():
        partial = source.with_suffix(".partial")
        write_random_model(partial, arch, n_layer, n_embed, n_vocab, "FP16")
        partial.rename(source)
    if dtype in GGUF_TYPES:
        return gguf_model(cache, arch, shape, dtype, n_vocab, stem)
    if dtype == "FP16":
        return source
    target = cache / f"{stem}-{body}{f'-head-{head}' if head else ''}.bin"
    if not target.exists():
        partial = target.with_suffix(".partial")
        native.default_library().quantize_model_file(source, partial, body, head_type=head or None)
        partial.rename(target)
    return target


def product_shapes(path: Path) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """(rows, cols) of every matrix product of one token in the layers, and of the head."""
    layers, head = [], (0, 0)
    for info in modelfile.list_tensors(path):
        dims = [d for d in info.shape if d > 1]
        if len(dims) != 2:
            continue
        if info.key.startswith("blocks."):
            layers.append((dims[0], dims[1]))
        elif info.key == "head.weight":
            head = (dims[0], dims[1])
    return layers, head


# ---- the machine's limits ---------------------------------------------------------------------


class ReadBandwidth:
    """Streaming read of a buffer far larger than the caches (numpy's OR-reduction runs at
    memory speed and releases the GIL, so threads read their share in parallel)."""

    def __init__(self, gib: float = 1.0):
        self.words = np.ones(int(gib * (1 << 30)) // 8, dtype=np.uint64)

    @classmethod
    def of_bytes(cls, nbytes: int) -> "ReadBandwidth":
        """A buffer of exactly the weights' size: read again and again, it stays in whatever
        cache holds that much, as the weights do between decoded tokens."""
        return cls(nbytes / (1 << 30))

    def measure(self, threads: int, runs: int = 5, cpu_clock: bool = False) -> float:
        if cpu_clock and threads == 1:  # on this thread, timed by its CPU time (as the engine)
            rates = []
            for _ in range(runs + 1):
                start = time.thread_time()
                np.bitwise_or.reduce(self.words)
                rates.append(self.words.nbytes / (time.thread_time() - start) / 1e9)
            return statistics.median(rates[1:])
        parts = np.array_split(self.words, threads)
        rates = []
        for _ in range(runs + 1):
            workers = [threading.Thread(target=np.bitwise_or.reduce, args=(p,)) for p in parts]
            start = time.perf_counter()
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            rates.append(self.words.nbytes / (time.perf_counter() - start) / 1e9)
        return statistics.median(rates[1:])


NUMPY_RATE = r"""
import json, statistics, sys, time
import numpy as np
try:
    from threadpoolctl import threadpool_info
    blas = "; ".join(
        f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')} ({i.get('num_threads')} threads)"
        for i in threadpool_info() if i.get("user_api") == "blas")
except ImportError:
    blas = "unknown (pip install threadpoolctl)"
shapes, tokens, runs = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
clock = time.thread_time if sys.argv[4] == "cpu" else time.perf_counter
rng = np.random.default_rng(0)
mats = [rng.standard_normal((r, c), dtype=np.float32) for r, c in shapes]
xs = {c: rng.standard_normal((c, tokens), dtype=np.float32) for _, c in shapes}
flops = sum(2.0 * r * c * tokens for r, c in shapes)
rates = []
for _ in range(runs + 1):
    start = clock()
    for w in mats:
        w @ xs[w.shape[1]]
    rates.append(flops / (clock() - start) / 1e9)
print(json.dumps({"GFLOPps": statistics.median(rates[1:]), "blas": blas}))
"""

# Tuning variables of older OpenBLAS builds that slow a current one's products (issue 16, on a
# machine that set them: 64 x 2048 by 2048 x 8192 FP32 at ~200 GFLOP/s with them, ~270
# without). The baseline runs without them so that it is numpy at its best on this machine;
# only the baseline's subprocess drops them, never the engine, the tests or CI.
BLAS_HANDICAPS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def numpy_matmul_rate(shapes: list[tuple[int, int]], threads: int, runs: int, cpu_clock: bool = False) -> tuple[float, str]:
    """GFLOP/s of numpy FP32 products of the given shapes with `CHUNK` tokens, on `threads`
    threads (a subprocess, since BLAS reads its thread count at import), and which BLAS
    kernel ran them (threadpoolctl's report)."""
    env = {k: v for k, v in os.environ.items() if k not in BLAS_HANDICAPS}
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    distinct = sorted(set(shapes))
    out = subprocess.run(
        [sys.executable, "-c", NUMPY_RATE, json.dumps(distinct), str(CHUNK), str(runs),
         "cpu" if cpu_clock else "wall"],
        check=True, capture_output=True, text=True, env=env,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return float(result["GFLOPps"]), str(result["blas"])


# ---- the engine -------------------------------------------------------------------------------


def measure_engines(engines: list[tuple[str, native.Library]], path: Path, threads: int, runs: int,
                    decode_tokens: int, cpu_clock: bool = False) -> list[tuple[str, dict]]:
    """Decode and prompt times of every engine on one file, their runs interleaved (run 1 of
    each engine, then run 2 of each...) so that a busy moment of a shared machine falls on all
    of them alike rather than on whichever was measured then."""
    opened = []
    try:
        for label, lib in engines:
            opened.append((label, lib, lib.init_from_file(path, threads)))
        rng = np.random.default_rng(1)
        n_vocab = engines[0][1].get_n_vocab(opened[0][2])
        tokens = rng.integers(0, n_vocab, size=max(CHUNK, decode_tokens)).tolist()
        buffers = {}
        for label, lib, ctx in opened:
            state = np.empty(lib.get_state_len(ctx), np.float32)
            logits = np.empty(lib.get_logits_len(ctx), np.float32)
            lib.eval_sequence(ctx, tokens[:CHUNK], None, state, logits)  # warm-up: page in, caches
            buffers[label] = (state, logits)
        # one thread runs the engine on the calling thread, whose CPU time other work on a
        # shared machine does not inflate
        clock = time.thread_time if cpu_clock else time.perf_counter
        decode = {label: [] for label, _, _ in opened}
        prompt = {label: [] for label, _, _ in opened}
        for _ in range(runs):
            for label, lib, ctx in opened:
                state, logits = buffers[label]
                start = clock()
                for token in tokens[:decode_tokens]:
                    lib.eval(ctx, token, state, state, logits)
                decode[label].append((clock() - start) / decode_tokens)
                start = clock()
                lib.eval_sequence(ctx, tokens[:CHUNK], None, state, logits)
                prompt[label].append((clock() - start) / CHUNK)
        return [(label, {
            "kernels": lib.get_kernel_path(ctx),
            "weight_bytes_per_token": lib.get_weight_bytes_per_token(ctx),
            "decode_s": statistics.median(decode[label]),
            "prompt_s": statistics.median(prompt[label]),
        }) for label, lib, ctx in opened]
    finally:
        for _, lib, ctx in opened:
            lib.free(ctx)


TABLE_COLUMNS = [
    ("shape", "shape"), ("arch", "arch"), ("type", "type"), ("engine", "engine"), ("threads", "thr"),
    ("clock", "clock"),
    ("decode_ms_per_token", "decode ms/tok"), ("decode_floor_ms", "floor ms"),
    ("effective_GBps", "GB/s"), ("read_bandwidth_GBps", "read GB/s"), ("bandwidth_ratio", "of floor"),
    ("read_own_size_GBps", "own-size read GB/s"), ("own_size_ratio", "of own-size read"),
    ("prompt_ms_per_token", "prompt ms/tok"), ("prompt_GFLOPps", "GFLOP/s"),
    ("numpy_fp32_GFLOPps", "numpy FP32 GFLOP/s"), ("prompt_vs_numpy", "vs numpy"),
]


def markdown_table(path: str) -> str:
    """The JSON lines of a run as a markdown table (for benchmarks/README.md)."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.startswith("{")]
    lines = ["| " + " | ".join(title for _, title in TABLE_COLUMNS) + " |"]
    lines.append("|" + "---|" * len(TABLE_COLUMNS))
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(key, "")) for key, _ in TABLE_COLUMNS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="169M", help=f"comma list of {', '.join(SHAPES)}")
    parser.add_argument("--types", default=",".join(TYPES), help="comma list of tensor types")
    parser.add_argument("--threads", default="2,1", help="comma list of thread counts")
    parser.add_argument("--arch", default="4", help="architecture of the random models (4, 5.2, 6, 7)")
    parser.add_argument("--vocab", type=int, default=50277)
    parser.add_argument("--runs", type=int, default=5, help="runs per figure (the median is reported)")
    parser.add_argument("--decode-tokens", type=int, default=16, help="tokens per decode run")
    parser.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "rwkv-bench-models"))
    parser.add_argument("--table", metavar="JSONL", help="print the markdown table of a saved run and exit")
    parser.add_argument("--lib", action="append", default=[], metavar="LABEL=PATH",
                        help="also measure this build of the engine (a librwkv.so, e.g. of an earlier "
                             "commit: `make -C native BUILD=/tmp/old`, adding EXTRA_CFLAGS=-fwrapv for a commit "
                             "whose Makefile lacks the package's -fwrapv), its runs interleaved with ours "
                             "on every line: before/after figures from one run; repeatable")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time one-thread lines (engine and numpy) by the thread's CPU time instead of "
                             "wall time: steadier on a shared machine (the read bandwidth of those lines too: "
                             "a thread stalled on memory still spends CPU time, so decode's ratio to the floor "
                             "keeps its meaning)")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown_table(args.table))
        return 0

    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    engines = [("this", native.default_library())]
    for spec in args.lib:
        label, sep, lib_path = spec.partition("=")
        if not sep or not label or not lib_path:
            parser.error(f"--lib takes LABEL=PATH, not {spec!r}")
        engines.append((label, native.Library(lib_path)))
    bandwidth = ReadBandwidth()
    thread_counts = [int(t) for t in args.threads.split(",")]
    for shape in args.shapes.split(","):
        if shape not in SHAPES:
            parser.error(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
        for dtype in args.types.split(","):
            path = model_file(cache, args.arch, shape, dtype, args.vocab)
            # the products' shapes from the rwkv.cpp file of the same model (GGUF files too)
            layers, head = product_shapes(model_file(cache, args.arch, shape, "FP16", args.vocab))
            flops_per_chunk = 2.0 * CHUNK * sum(r * c for r, c in layers) + 2.0 * head[0] * head[1]
            for threads in thread_counts:
                cpu_clock = args.cpu_time and threads == 1
                read_before = bandwidth.measure(threads, cpu_clock=cpu_clock)
                numpy_before, blas = numpy_matmul_rate(layers, threads, args.runs, cpu_clock)
                measured = measure_engines(engines, path, threads, args.runs, args.decode_tokens, cpu_clock)
                read_gbps = max(read_before, bandwidth.measure(threads, cpu_clock=cpu_clock))
                numpy_gflops = max(numpy_before, numpy_matmul_rate(layers, threads, args.runs, cpu_clock)[0])
                own_size = ReadBandwidth.of_bytes(measured[0][1]["weight_bytes_per_token"])
                own_gbps = own_size.measure(threads, cpu_clock=cpu_clock)
                del own_size
                for label, engine in measured:
                    print(json.dumps(result_line(shape, args.arch, dtype, threads, label, engine, read_gbps,
                                                 numpy_gflops, flops_per_chunk, cpu_clock, blas, own_gbps)),
                          flush=True)
    return 0


def result_line(shape: str, arch: str, dtype: str, threads: int, label: str, engine: dict, read_gbps: float,
                numpy_gflops: float, flops_per_chunk: float, cpu_clock: bool, blas: str,
                own_gbps: float) -> dict:
    weight_bytes = engine["weight_bytes_per_token"]
    effective = weight_bytes / engine["decode_s"] / 1e9
    prompt_gflops = flops_per_chunk / (engine["prompt_s"] * CHUNK) / 1e9
    return {
        "shape": shape, "arch": arch, "type": dtype, "threads": threads, "engine": label,
        "kernels": engine["kernels"],
        "weight_bytes_per_token": weight_bytes,
        "decode_ms_per_token": round(engine["decode_s"] * 1e3, 3),
        "decode_floor_ms": round(weight_bytes / read_gbps / 1e6, 3),
        "effective_GBps": round(effective, 2),
        "read_bandwidth_GBps": round(read_gbps, 2),
        "bandwidth_ratio": round(effective / read_gbps, 3),
        "read_own_size_GBps": round(own_gbps, 2),
        "own_size_ratio": round(effective / own_gbps, 3),
        "prompt_ms_per_token": round(engine["prompt_s"] * 1e3, 3),
        "prompt_GFLOPps": round(prompt_gflops, 1),
        "numpy_fp32_GFLOPps": round(numpy_gflops, 1),
        "prompt_vs_numpy": round(prompt_gflops / numpy_gflops, 3),
        "prompt_speedup_vs_decode": round(engine["decode_s"] / engine["prompt_s"], 2),
        "clock": "thread_cpu" if cpu_clock else "wall",
        "numpy_blas": blas,
        "numpy_env_dropped": [v for v in BLAS_HANDICAPS if v in os.environ],
    }


if __name__ == "__main__":
    sys.exit(main())
