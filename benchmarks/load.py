"""Load time and first-token time with the weights in 2 MiB pages (the copy) or file-mapped.

    python benchmarks/load.py                                  # 169M v7 Q8_0 and 1.5B v4 FP16
    python benchmarks/load.py --models 169M:7:65536:Q8_0 --runs 5

A file's weights are read at load into anonymous memory that asks for huge pages
(native/model.c; the default from 64 MB to 2 GiB; forced here with `RWKV_WEIGHTS=copy`, so
larger files are copied too), or left in a read-only mapping of the file
(`RWKV_WEIGHTS=mmap`) whose pages the first tokens fault in. So both figures matter: the
load (`rwkv_init_from_file`) and the first decoded token after it. Every run starts with the
file in the page cache (it is read once before), so this measures memory work, not the disk.
One JSON line per model and mode: medians over `--runs` of the load, the first token and the
tenth (a warm token, for scale). Models come from benchmarks/engine.py's cache (written once).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine import model_file  # the benchmark models' writer and cache

from rwkv_cli import engine as native


def measure(lib: native.Library, path: Path, mode: str, threads: int) -> dict:
    os.environ["RWKV_WEIGHTS"] = mode  # read by the engine at each load
    start = time.perf_counter()
    ctx = lib.init_from_file(path, threads)
    loaded = time.perf_counter()
    try:
        state = np.empty(lib.get_state_len(ctx), np.float32)
        logits = np.empty(lib.get_logits_len(ctx), np.float32)
        token_s = []
        for i in range(10):
            t = time.perf_counter()
            lib.eval(ctx, 1 + i, None if i == 0 else state, state, logits)
            token_s.append(time.perf_counter() - t)
    finally:
        lib.free(ctx)
    return {"load_s": loaded - start, "first_token_s": token_s[0], "tenth_token_s": token_s[-1]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="169M:7:65536:Q8_0,1.5B:4:50277:FP16",
                        help="comma list of SHAPE:ARCH:VOCAB:TYPE (benchmarks/engine.py's shapes)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "rwkv-bench-models"))
    args = parser.parse_args(argv)
    lib = native.default_library()
    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    for spec in args.models.split(","):
        shape, arch, vocab, dtype = spec.split(":")
        path = model_file(cache, arch, shape, dtype, int(vocab))
        path.read_bytes()  # into the page cache: the runs measure memory, not the disk
        runs: dict[str, list[dict]] = {"copy": [], "mmap": []}
        for _ in range(args.runs):  # the two modes alternate, so a busy moment hits both
            for mode, rows in runs.items():
                rows.append(measure(lib, path, mode, args.threads))
        for mode, rows in runs.items():
            line = {"model": path.name, "file_MB": round(path.stat().st_size / 1e6, 1), "weights": mode,
                    "threads": args.threads, "runs": args.runs}
            for key in rows[0]:
                line[f"{key[:-2]}_ms"] = round(statistics.median(r[key] for r in rows) * 1e3, 2)
            print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
