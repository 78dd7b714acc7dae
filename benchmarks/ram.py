"""Peak memory of `rwkv-cpp` running a model, against the setup wizard's RAM estimate.

    python benchmarks/ram.py                      # JSON lines on stdout
    python benchmarks/ram.py --shapes tiny,0.1B   # a subset

For each shape a random-weight model is written (our writer; the size of a file, not its
values, decides the memory), then `rwkv-cpp complete` runs on it in a child process with a
prompt longer than one sequence-mode chunk, and the child's peak resident set size is read
from the kernel (VmHWM, which the child writes as it exits). Files of 64 MB to 2 GiB are read
whole into memory at load (2 MiB pages); other files are memory-mapped and every token reads
all of them but the embedding (read row by row). The rest is the Python runtime with its
libraries, the tokenizer's tables and the engine's per-context buffers. Linux only (/proc).
Run it outside the project's root (the source folder there has no compiled engine).

Each line: the shape, the file size, the measured peak, the estimate of
`rwkv_cli.app.catalog.estimate_ram_bytes` for that file, and their ratio. The estimate's
constants come from this script's runs (see the README's "RAM estimates").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from rwkv_cli.app.catalog import estimate_ram_bytes
from rwkv_cli.formats.synthetic import write_random_model

# name: (arch, n_layer, n_embed, n_vocab, type)
SHAPES = {
    "tiny": ("4", 1, 32, 256, "FP32"),
    "tiny-world": ("7", 1, 64, 65536, "FP16"),
    "0.1B": ("7", 12, 768, 65536, "Q8_0"),
    "0.1B-FP16": ("7", 12, 768, 65536, "FP16"),
    "0.4B": ("7", 24, 1024, 65536, "Q8_0"),
}
PROMPT = "In a shocking finding, scientists discovered a herd of dragons. " * 8


# The child writes the peak resident set of its own memory image (VmHWM) when it exits; its
# ru_maxrss would start from the resident set of the process that forked it.
RUNNER = """
import atexit, re, runpy, sys

def report(path=sys.argv[1]):
    status = open("/proc/self/status").read()
    open(path, "w").write(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1))

atexit.register(report)
sys.argv = ["rwkv-cpp"] + sys.argv[2:]
runpy.run_module("rwkv_cli", run_name="__main__")
"""


def peak_rss(arguments: list[str], env: dict[str, str], folder: Path) -> int:
    """Peak resident set size of `rwkv-cpp ARGUMENTS` in a child process, in bytes."""
    report = folder / "peak"
    result = subprocess.run([sys.executable, "-c", RUNNER, str(report), *arguments], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            check=False)
    if result.returncode != 0:
        raise SystemExit(f"rwkv-cpp {' '.join(arguments)} failed: {result.stderr.strip()}")
    return int(report.read_text()) * 1024


def measure(name: str, folder: Path) -> dict:
    arch, n_layer, n_embed, n_vocab, data_type = SHAPES[name]
    path = folder / f"{name}.bin"
    write_random_model(path, arch, n_layer, n_embed, n_vocab, data_type=data_type)
    env = dict(os.environ, RWKV_HOME=str(folder / "home"), NO_COLOR="1")
    arguments = ["complete", PROMPT, "--model-path", str(path), "--max-tokens", "16",
                 "--temperature", "0"]
    peaks = [peak_rss(arguments, env, folder) for _ in range(3)]
    measured = sorted(peaks)[1]
    file_size = path.stat().st_size
    tokenizer = "bytes" if n_vocab == 256 else "world"
    estimate = estimate_ram_bytes(file_size, tokenizer)
    path.unlink()
    return {
        "shape": name, "arch": arch, "n_layer": n_layer, "n_embed": n_embed, "n_vocab": n_vocab,
        "type": data_type, "fileMB": round(file_size / 1e6, 1),
        "peakRssMB": round(measured / 1e6, 1), "overheadMB": round((measured - file_size) / 1e6, 1),
        "estimateMB": round(estimate / 1e6, 1),
        "estimateOverMeasured": round(estimate / measured, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default=",".join(SHAPES))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.shapes.split(","):
            print(json.dumps(measure(name.strip(), Path(scratch))), flush=True)


if __name__ == "__main__":
    main()
