"""`rwkv-cpp serve` under load, as JSON lines: N concurrent streaming clients, the server's
own cost per token, and what conversation affinity gains behind a load balancer.

Three parts (each a JSON line per measurement; `--parts` picks):

- `clients`: `rwkv-cpp serve` started on 127.0.0.1 (a process of its own, `--parallel` the
  largest N), driven by N = 1, 4, 8, 16 concurrent streaming clients (httpx, raw SSE), each
  with its own prompt and `--tokens` tokens: aggregate tokens/s (all completion tokens over
  the wall time from the first request to the last [DONE]), time to first token p50/p99
  (request sent -> first text event), time between tokens p50/p99 (between a client's text
  events). `speedup_vs_1_client` compares with N = 1 on the same server; a line
  `"clients": 1, "parallel": 1` is one client on a server started with `--parallel 1`, where
  a single completion gets every thread (`speedup_vs_single_server`). Rounds interleave
  every N, and the ratios are medians of the ratios within a round.
- `overhead`: the server's own cost per generated token (HTTP, JSON, SSE, the hop from the
  model's thread to the event loop) against the library alone: the same completion streamed
  by `RWKV.completion(stream=True)` in this process and through the server with one client,
  as CPU time per token of the process doing it (the server's process; this one for the
  library) and as wall time per token. Measured on the benchmark model and on a tiny model
  (2 x 64, byte vocabulary), where the engine's share is small and the difference is the
  server's cost, well above the noise.
- `affinity`: two instances behind nginx (tests/scale_out/nginx.conf); a conversation with a
  history of H tokens continues, its next turn sent with the conversation's id (the
  instance that has its state: a cache hit) or with an id that nginx routes to the other
  instance (a miss: the whole history is read again): time to first token of both.

    python benchmarks/serve.py                       # RWKV-7 0.1B shape, Q8_0, 2 threads
    python benchmarks/serve.py --parts overhead --runs 5
    python benchmarks/serve.py --parts affinity --history 500,2000

Models are random-weight files of the real shape (benchmarks/engine.py writes and caches
them); random weights decode at the speed of real ones. The machine is shared: medians of
`--runs` runs, and rerun when it is quiet.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

from rwkv_cli import RWKV
from rwkv_cli.formats.synthetic import write_random_model

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "scale_out"))
from engine import SHAPES, model_file  # a sibling script, not a package

START_TIMEOUT = 120.0
REQUEST_TIMEOUT = 600.0
WORDS = ["river", "stone", "lantern", "harbor", "meadow", "copper", "violin", "orchard",
         "signal", "winter", "garden", "engine", "mirror", "thunder", "island", "pocket",
         "ribbon", "castle", "candle", "forest"]


def emit(line: dict) -> None:
    print(json.dumps(line), flush=True)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def prose(n_words: int, seed: int) -> str:
    """Deterministic text of about n_words words (a few tokens each at most)."""
    words = [WORDS[(seed * 7 + i * i + i * seed) % len(WORDS)] for i in range(n_words)]
    return " ".join(words)


# ---- a server process ----


class ServerProcess:
    """`rwkv-cpp serve` on a free port of 127.0.0.1, until `stop()`."""

    def __init__(self, model: Path, parallel: int, threads: int, queue: int = 256):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "rwkv_cli", "serve", "--modelPath", str(model),
             "--port", "0", "--parallel", str(parallel), "--queue", str(queue),
             "--threads", str(threads)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tempfile.gettempdir(),
        )
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.append(self.process.stdout.readline()),
                                  daemon=True)
        reader.start()
        reader.join(START_TIMEOUT)
        found = re.search(r"http://[\d.]+:\d+", lines[0]) if lines else None
        if found is None:
            self.stop()
            raise RuntimeError(f"the server did not start: {self.process.stderr.read()[-2000:]}")
        self.url = found.group(0)
        self.port = int(self.url.rsplit(":", 1)[1])
        self.announced = lines[0].strip()
        self.ps = psutil.Process(self.process.pid)

    def cpu_seconds(self) -> float:
        times = self.ps.cpu_times()
        return times.user + times.system

    def metric(self, name: str) -> float:
        text = httpx.get(self.url + "/metrics", timeout=30).text
        for line in text.splitlines():
            if line.startswith((name + " ", name + "{")):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)


# ---- streaming clients ----


async def stream_one(client: httpx.AsyncClient, url: str, body: dict,
                     headers: dict | None = None) -> dict:
    """One streamed request: send time, text-event times, completion tokens, end time."""
    sent = time.perf_counter()
    events: list[float] = []
    tokens = 0
    async with client.stream("POST", url, json=body, headers=headers or {}) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            if "error" in data:
                raise RuntimeError(data["error"]["message"])
            if data.get("usage"):
                tokens = data["usage"]["completion_tokens"]
            choices = data.get("choices") or []
            if not choices:
                continue
            choice = choices[0]
            text = choice.get("text") if "text" in choice else choice["delta"].get("content")
            if text:
                events.append(time.perf_counter())
    return {"sent": sent, "events": events, "tokens": tokens, "done": time.perf_counter()}


def completion_body(prompt: str, tokens: int) -> dict:
    return {"prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}


async def drive(url: str, n_clients: int, tokens: int, round_index: int) -> list[dict]:
    limits = httpx.Limits(max_connections=n_clients + 4, max_keepalive_connections=n_clients)
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT, limits=limits) as client:
        jobs = [
            stream_one(client, url + "/v1/completions",
                       completion_body(f"Client {i} round {round_index}: {prose(12, i)}", tokens))
            for i in range(n_clients)
        ]
        return await asyncio.gather(*jobs)


def figures(records: list[dict]) -> dict:
    ttft = [(r["events"][0] - r["sent"]) * 1000 for r in records if r["events"]]
    tbt = [(b - a) * 1000 for r in records for a, b in zip(r["events"], r["events"][1:])]
    wall = max(r["done"] for r in records) - min(r["sent"] for r in records)
    return {
        "tokens": sum(r["tokens"] for r in records),
        "aggregate_tokens_per_s": sum(r["tokens"] for r in records) / wall,
        "ttft": ttft,
        "tbt": tbt,
    }


def summarize(runs: list[dict]) -> dict:
    ttft = [x for run in runs for x in run["ttft"]]
    tbt = [x for run in runs for x in run["tbt"]]
    return {
        "aggregate_tokens_per_s": round(statistics.median(
            run["aggregate_tokens_per_s"] for run in runs), 2),
        "ttft_ms_p50": round(percentile(ttft, 50), 2),
        "ttft_ms_p99": round(percentile(ttft, 99), 2),
        "tbt_ms_p50": round(percentile(tbt, 50), 3),
        "tbt_ms_p99": round(percentile(tbt, 99), 3),
    }


def part_clients(args: argparse.Namespace, model: Path, base: dict) -> None:
    """Rounds interleave every N (and the single-completion server), so that the load of a
    shared machine falls on all of them alike; ratios are medians of per-round ratios."""
    counts = [int(n) for n in args.clients.split(",")]
    parallel = max(counts)
    server = ServerProcess(model, parallel, args.threads)
    single = ServerProcess(model, 1, args.threads)
    rounds: dict[object, list[dict]] = {n: [] for n in counts}
    rounds["single"] = []
    try:
        for url in (server.url, single.url):  # warm-up: first-use costs out of the way
            asyncio.run(drive(url, 1, 4, -1))
        for r in range(args.runs):
            rounds["single"].append(figures(asyncio.run(drive(single.url, 1, args.tokens, r))))
            for n in counts:
                rounds[n].append(figures(asyncio.run(drive(server.url, n, args.tokens, r))))
    finally:
        server.stop()
        single.stop()

    def ratio(n: int, baseline: object) -> float:
        return round(statistics.median(
            a["aggregate_tokens_per_s"] / b["aggregate_tokens_per_s"]
            for a, b in zip(rounds[n], rounds[baseline])), 2)

    emit({**base, "part": "clients", "clients": 1, "parallel": 1,
          "tokens_per_client": args.tokens, **summarize(rounds["single"])})
    for n in counts:
        line = {**base, "part": "clients", "clients": n, "parallel": parallel,
                "tokens_per_client": args.tokens, **summarize(rounds[n]),
                "speedup_vs_single_server": ratio(n, "single")}
        if 1 in rounds:
            line["speedup_vs_1_client"] = ratio(n, 1)
        emit(line)


# ---- the server's own cost per token ----


def library_alone(model_path: Path, threads: int, tokens: int, prompt: str) -> dict:
    """CPU and wall time per token of a streamed completion in this process."""
    with RWKV(model_path, threads=threads) as model:
        list(model.completion("warm up", max_tokens=4, stream=True))
        cpu, wall, n = [], [], []
        for r in range(3):
            cpu0, wall0 = time.process_time(), time.perf_counter()
            chunks = model.completion(f"{prompt} {r}", max_tokens=tokens, temperature=0,
                                      stream=True)
            last = None
            for last in chunks:
                pass
            cpu.append(time.process_time() - cpu0)
            wall.append(time.perf_counter() - wall0)
            n.append(last.result.usage.completion_tokens)
    return {"cpu_ms_per_token": statistics.median(c / k * 1000 for c, k in zip(cpu, n)),
            "wall_ms_per_token": statistics.median(w / k * 1000 for w, k in zip(wall, n))}


def through_server(model_path: Path, threads: int, tokens: int, prompt: str) -> dict:
    server = ServerProcess(model_path, 1, threads)
    try:
        asyncio.run(drive(server.url, 1, 4, -1))
        cpu, wall, n = [], [], []
        for r in range(3):
            body = completion_body(f"{prompt} {r}", tokens)
            cpu0 = server.cpu_seconds()
            record = asyncio.run(_single(server.url, body))
            cpu.append(server.cpu_seconds() - cpu0)
            wall.append(record["done"] - record["sent"])
            n.append(record["tokens"])
    finally:
        server.stop()
    return {"cpu_ms_per_token": statistics.median(c / k * 1000 for c, k in zip(cpu, n)),
            "wall_ms_per_token": statistics.median(w / k * 1000 for w, k in zip(wall, n))}


async def _single(url: str, body: dict) -> dict:
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT) as client:
        return await stream_one(client, url + "/v1/completions", body)


def part_overhead(args: argparse.Namespace, model: Path, base: dict, cache: Path) -> None:
    tiny = cache / "serve-tiny-v7-2x64-bytes-FP32.bin"
    if not tiny.exists():
        write_random_model(tiny, "7", 2, 64, 256, "FP32")
    cases = [(model, base["model"], args.overhead_tokens, args.threads),
             (tiny, "tiny 2x64 bytes FP32", 2000, 1)]
    for path, label, tokens, threads in cases:
        alone, served = [], []
        for _ in range(args.runs):  # interleaved: the machine's load falls on both alike
            alone.append(library_alone(path, threads, tokens, "Overhead test: " + prose(8, 3)))
            served.append(through_server(path, threads, tokens, "Overhead test: " + prose(8, 3)))

        def med(rows: list[dict], key: str) -> float:
            return statistics.median(row[key] for row in rows)

        emit({**base, "part": "overhead", "model": label, "threads": threads,
              "tokens": tokens,
              "library_cpu_ms_per_token": round(med(alone, "cpu_ms_per_token"), 4),
              "server_cpu_ms_per_token": round(med(served, "cpu_ms_per_token"), 4),
              "server_own_cpu_ms_per_token": round(
                  med(served, "cpu_ms_per_token") - med(alone, "cpu_ms_per_token"), 4),
              "library_wall_ms_per_token": round(med(alone, "wall_ms_per_token"), 4),
              "server_wall_ms_per_token": round(med(served, "wall_ms_per_token"), 4),
              "server_own_wall_ms_per_token": round(
                  med(served, "wall_ms_per_token") - med(alone, "wall_ms_per_token"), 4)})


# ---- affinity behind nginx ----


def part_affinity(args: argparse.Namespace, model: Path, base: dict) -> None:
    from balancer import Balancer

    instances = [ServerProcess(model, 2, args.threads) for _ in range(2)]
    folder = Path(tempfile.mkdtemp(prefix="rwkv-nginx-"))
    balancer = Balancer(folder, [s.port for s in instances])
    chat = "/v1/chat/completions"

    def served_by() -> list[float]:
        return [s.metric('rwkv_requests_total{path="/v1/chat/completions",status="200"}')
                for s in instances]

    def send(client: httpx.Client, messages: list, conversation: str, tokens: int) -> dict:
        body = {"messages": messages, "max_tokens": tokens, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}}
        return asyncio.run(_stream_chat(balancer.url + chat, body, conversation))

    try:
        with httpx.Client(timeout=REQUEST_TIMEOUT) as client:
            for history in [int(h) for h in args.history.split(",")]:
                hit, miss = [], []
                for run in range(args.runs):
                    conversation = f"conv-{history}-{run}"
                    messages = [{"role": "user", "content": prose(history, run + history)}]
                    before = served_by()
                    first = send(client, messages, conversation, 16)
                    home = [a - b for a, b in zip(served_by(), before)].index(1)
                    messages += [{"role": "assistant", "content": first["text"]},
                                 {"role": "user", "content": "What happened next?"}]
                    # An id that nginx sends to the other instance (found by asking).
                    probe = 0
                    while True:
                        probe += 1
                        before = served_by()
                        send(client, [{"role": "user", "content": "hi"}], f"probe-{probe}", 1)
                        if [a - b for a, b in zip(served_by(), before)].index(1) != home:
                            break
                    elsewhere = f"probe-{probe}"
                    # Misses first: the hit's own reply would otherwise be cached on the
                    # other instance too (it is not, each is a separate process).
                    miss.append(send(client, messages, elsewhere, 8))
                    hit.append(send(client, messages, conversation, 8))
                emit({**base, "part": "affinity", "history_tokens": hit[0]["prompt_tokens"],
                      "cached_tokens_hit": hit[0]["cached_tokens"],
                      "cached_tokens_miss": miss[0]["cached_tokens"],
                      "ttft_ms_hit": round(statistics.median(r["ttft_ms"] for r in hit), 1),
                      "ttft_ms_miss": round(statistics.median(r["ttft_ms"] for r in miss), 1)})
    finally:
        balancer.stop()
        for server in instances:
            server.stop()


async def _stream_chat(url: str, body: dict, conversation: str) -> dict:
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT) as client:
        sent = time.perf_counter()
        first, text, usage = None, [], {}
        async with client.stream("POST", url, json=body,
                                 headers={"X-Conversation-Id": conversation}) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                data = json.loads(line[6:])
                if data.get("usage"):
                    usage = data["usage"]
                for choice in data.get("choices") or []:
                    piece = choice["delta"].get("content")
                    if piece:
                        first = first or time.perf_counter()
                        text.append(piece)
    return {"ttft_ms": ((first or time.perf_counter()) - sent) * 1000, "text": "".join(text),
            "prompt_tokens": usage.get("prompt_tokens", 0),
            "cached_tokens": usage.get("prompt_tokens_details", {}).get("cached_tokens", 0)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="clients,overhead,affinity")
    parser.add_argument("--arch", default="7")
    parser.add_argument("--shape", default="169M", choices=sorted(SHAPES))
    parser.add_argument("--type", default="Q8_0")
    parser.add_argument("--vocab", type=int, default=65536)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clients", default="1,4,8,16")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per client")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--overhead-tokens", type=int, default=256,
                        help="overhead: tokens per completion on the benchmark model")
    parser.add_argument("--history", default="500,2000",
                        help="affinity: words of conversation history (about as many tokens)")
    parser.add_argument(
        "--cache-dir", default=os.path.join(tempfile.gettempdir(), "rwkv-bench-models")
    )
    args = parser.parse_args(argv)
    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    model = model_file(cache, args.arch, args.shape, args.type, args.vocab)
    base = {"model": f"rwkv{args.arch}-{args.shape}-{args.type}", "threads": args.threads,
            "cpus": os.cpu_count()}
    parts = args.parts.split(",")
    if "clients" in parts:
        part_clients(args, model, base)
    if "overhead" in parts:
        part_overhead(args, model, base, cache)
    if "affinity" in parts:
        part_affinity(args, model, base)
    return 0


if __name__ == "__main__":
    sys.exit(main())
