"""Our engine beside llama.cpp on the same GGUF files: logits, perplexity and speed.

llama.cpp is the measuring instrument here, reached through `llama-cpp-python` (which builds
llama.cpp from source: `pip install llama-cpp-python`, several minutes; it is no dependency of
this project). Without it the script prints one JSON line saying so and exits 0.

The files: a random-weight RWKV-7 (or RWKV-6) model of a real shape with the World
vocabulary, written as F32 and F16 GGUF by the tests' writer (tests/gguf_writer.py, llama.cpp's
layout), and quantized from the F16 file by llama.cpp's own quantizer (its presets: Q8_0,
Q6_K, Q5_K_M, Q4_K_M, Q4_0, ...), so the K-quant files are exactly what llama-quantize makes.

For each file, one JSON line:
- logits after `--tokens` tokens of the text: max |ours - llama.cpp|; for the F32 and F16 files
  also each engine's distance from an exact computation (tests/reference.py, float64, on the
  weights as the file holds them; shapes up to 169M); for quantized files llama.cpp's own
  distance from its F16 file (the scale the difference is judged against);
- perplexity (llama.cpp's definition, --ctx tokens per chunk, the second half scored): ours
  from `RWKV.perplexity`, llama.cpp's from its logits on the same chunks, each chunk from a
  cleared state (llama-cpp-python has no perplexity tool; this is that tool's arithmetic);
- speed, both with --threads threads, medians of --runs: decode ms/token and prompt tokens/s
  (64-token batches).

    python benchmarks/llama_cpp_compare.py --arch 7 --shape 169M --threads 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHAPES = {"tiny": (2, 256), "169M": (12, 768), "430M": (24, 1024), "1.5B": (24, 2048)}
FTYPES = {"Q8_0": 7, "Q6_K": 18, "Q5_K_M": 17, "Q5_K_S": 16, "Q4_K_M": 15, "Q4_K_S": 14,
          "Q4_0": 2, "Q4_1": 3, "Q5_0": 8, "Q5_1": 9, "Q3_K_M": 12, "Q2_K": 10}
DEFAULT_TYPES = "F32,F16,Q8_0,Q6_K,Q5_K_M,Q4_K_M,Q4_0"
PROMPT_BATCH = 64


def world_vocabulary():
    from rwkv_cli.core.tokenizer import WorldTokenizer

    table = WorldTokenizer()._table
    tokens = ["<s>"] + [repr(t)[2:-1] for t in table[1:65530]] + [f"[PAD{i}]" for i in range(65530, 65536)]
    types = [3] + [1] * 65529 + [5] * 6
    return tokens, types


def write_models(cache: Path, arch: str, shape: str, types: list[str], threads: int) -> dict[str, Path]:
    sys.path.insert(0, str(REPO / "tests"))
    import llama_cpp
    from gguf_writer import write_rwkv_gguf

    from rwkv_cli.formats.synthetic import random_tensors

    n_layer, n_embed = SHAPES[shape]
    stem = cache / f"rwkv{arch}-{shape}"
    tokens, token_types = world_vocabulary()
    paths = {}
    for kind, file_type in (("F32", 0), ("F16", 1)):
        path = Path(f"{stem}-{kind}.gguf")
        if not path.exists():
            partial = path.with_suffix(".partial")
            write_rwkv_gguf(partial, arch, random_tensors(arch, n_layer, n_embed, 65536, seed=0), n_layer,
                            n_embed, 64, kind=kind, kind_of=(lambda key, s, k=kind: k) if kind == "F16" else None,
                            rescale_every=6 if arch == "6" else 0, layer0_value_lora=True,
                            tokens=tokens, metadata={"tokenizer.ggml.token_type": token_types},
                            file_type=file_type, keep_values=False)
            partial.rename(path)
        paths[kind] = path
    for kind in types:
        if kind in paths:
            continue
        path = Path(f"{stem}-{kind}.gguf")
        if not path.exists():
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype = FTYPES[kind]
            params.nthread = threads
            partial = path.with_suffix(".partial")
            if llama_cpp.llama_model_quantize(str(paths["F16"]).encode(), str(partial).encode(), params) != 0:
                raise SystemExit(f"llama.cpp could not quantize to {kind}")
            partial.rename(path)
        paths[kind] = path
    return paths


def exact_logits(arch: str, shape: str, kind: str, tokens: list[int]) -> np.ndarray:
    """The NumPy reference (float64) on the weights the F32 / F16 file holds: the same random
    tensors, rounded to half precision where the F16 file stores them so, rescaled as
    llama.cpp's rwkv6 files are."""
    sys.path.insert(0, str(REPO / "tests"))
    from reference import Reference

    from rwkv_cli.formats.synthetic import random_tensors

    n_layer, n_embed = SHAPES[shape]
    values = {}
    for key, value in random_tensors(arch, n_layer, n_embed, 65536, seed=0):
        parts = key.split(".")
        if arch == "6" and parts[0] == "blocks" and key.endswith(("att.output.weight", "ffn.value.weight")):
            value = value / np.float32(2.0 ** (int(parts[1]) // 6))
        if kind == "F16" and value.ndim >= 2 and key.endswith(".weight"):
            value = value.astype(np.float16).astype(np.float32)
        values[key] = value
    ref = Reference(values, n_layer, n_embed, 65536, arch=arch, rescale_every=6 if arch == "6" else 0)
    return ref.forward_sequence(tokens)[0]


# ---- llama.cpp -------------------------------------------------------------------------------


def llama(path: Path, threads: int, batch: int, logits_all: bool, repack: bool):
    """A llama_cpp.Llama; `repack`: llama.cpp's CPU "extra buffer" weight repacking (its
    AVX-512 layouts). In the llama.cpp of llama-cpp-python 0.3.36 decoding a batch of more than
    one token of a quantized RWKV-7 file crashes with it on (a fault inside llama.cpp, seen on
    its own llama-quantize files too), so batches run without it; single-token decoding works
    either way and is timed with it on, llama.cpp's default."""
    import llama_cpp
    import llama_cpp.llama_cpp as low

    default = low.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = repack
        return p

    low.llama_model_default_params = params
    try:
        return llama_cpp.Llama(str(path), n_ctx=max(batch, 256), n_batch=batch, n_ubatch=batch,
                               n_threads=threads, n_threads_batch=threads, logits_all=logits_all,
                               verbose=False)
    finally:
        low.llama_model_default_params = default


class LlamaRunner:
    def __init__(self, path: Path, threads: int, ctx: int):
        import llama_cpp

        self.llama_cpp = llama_cpp
        self.path, self.threads = path, threads
        self.llm = llama(path, threads, max(ctx, 256), logits_all=True, repack=False)

    def clear(self) -> None:
        self.llm.reset()
        self.llama_cpp.llama_memory_clear(self.llama_cpp.llama_get_memory(self.llm.ctx), True)

    def logits(self, tokens: list[int]) -> np.ndarray:
        """(len(tokens), n_vocab) logits after each token, from a cleared state."""
        self.clear()
        self.llm.eval(tokens)
        return np.array(self.llm.scores[: len(tokens)], dtype=np.float32)

    def speed(self, tokens: list[int], runs: int, decode_tokens: int) -> tuple[float, float]:
        """Decode (one token per call, repacking on) and prompt (64-token batches) seconds per
        token; neither computes more logits than the last token's."""
        decode, prompt = [], []
        for repack, timed in ((True, decode), (False, prompt)):
            llm = llama(self.path, self.threads, PROMPT_BATCH, logits_all=False, repack=repack)
            memory = self.llama_cpp.llama_get_memory(llm.ctx)
            llm.eval(tokens[:1] if repack else tokens[:PROMPT_BATCH])  # warm-up
            for _ in range(runs):
                llm.reset()
                self.llama_cpp.llama_memory_clear(memory, True)
                start = time.perf_counter()
                if repack:
                    for token in tokens[:decode_tokens]:
                        llm.eval([token])
                    timed.append((time.perf_counter() - start) / decode_tokens)
                else:
                    llm.eval(tokens[:PROMPT_BATCH])
                    timed.append((time.perf_counter() - start) / PROMPT_BATCH)
            del llm
        return statistics.median(decode), statistics.median(prompt)


# ---- ours ------------------------------------------------------------------------------------


def our_logits(model, tokens: list[int]) -> np.ndarray:
    with model._loaded_model().pool.worker() as worker:
        context = worker.context
        out = np.empty((len(tokens), context.n_vocab), np.float32)
        context.eval_sequence_all_logits(tokens, None, worker.state, out)
    return out


def our_speed(model, tokens: list[int], runs: int, decode_tokens: int) -> tuple[float, float]:
    decode, prompt = [], []
    with model._loaded_model().pool.worker() as worker:
        context, state, logits = worker.context, worker.state, worker.logits
        context.eval_sequence(tokens[:PROMPT_BATCH], None, state, logits)  # warm-up
        for _ in range(runs):
            context.init_state(state)
            start = time.perf_counter()
            for token in tokens[:decode_tokens]:
                context.eval(token, state, state, logits)
            decode.append((time.perf_counter() - start) / decode_tokens)
            start = time.perf_counter()
            context.eval_sequence(tokens[:PROMPT_BATCH], None, state, logits)
            prompt.append((time.perf_counter() - start) / PROMPT_BATCH)
    return statistics.median(decode), statistics.median(prompt)


def perplexity_of(logits_fn, tokens: list[int], ctx: int, chunks: int) -> float:
    """llama.cpp's definition, given logits_fn(chunk) -> the logits after each of its tokens
    from a cleared state."""
    from rwkv_cli.core.perplexity import Accumulator

    acc = Accumulator()
    first = ctx // 2
    for c in range(chunks):
        chunk = tokens[c * ctx:(c + 1) * ctx]
        rows = logits_fn(chunk)[first:ctx - 1]
        acc.add(rows, np.array(chunk[first + 1:]))
    return acc.perplexity


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="7", choices=["6", "7"])
    parser.add_argument("--shape", default="169M", choices=list(SHAPES))
    parser.add_argument("--types", default=DEFAULT_TYPES)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64, help="tokens before the logits are compared")
    parser.add_argument("--ctx", type=int, default=512, help="perplexity chunk (llama.cpp's -c)")
    parser.add_argument("--chunks", type=int, default=4, help="perplexity chunks of the text")
    parser.add_argument("--text", default=str(REPO / "README.md"))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--exact", type=int, default=None,
                        help="compare the float files with the NumPy reference (default: up to 169M)")
    parser.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "rwkv-llama-compare"))
    args = parser.parse_args(argv)
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print(json.dumps({"skipped": "llama_cpp (llama-cpp-python) is not installed"}))
        return 0

    from rwkv_cli import RWKV

    if args.exact is None:
        args.exact = args.shape in ("tiny", "169M")
    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    types = args.types.split(",")
    paths = write_models(cache, args.arch, args.shape, types, args.threads)
    text = Path(args.text).read_text(encoding="utf-8")
    f16_prompt_logits = None
    for kind in ["F16"] + [t for t in types if t != "F16"]:
        path = paths[kind]
        with RWKV(path, threads=args.threads, state_cache_size=0) as model:
            tokens = model.tokenizer.encode(text)
            chunks = min(args.chunks, len(tokens) // args.ctx)
            llama = LlamaRunner(path, args.threads, args.ctx)
            prompt = tokens[: args.tokens]
            ours = our_logits(model, prompt)[-1]
            theirs = llama.logits(prompt)[-1]
            if kind == "F16":
                f16_prompt_logits = theirs
            row = {
                "arch": args.arch, "shape": args.shape, "type": kind, "file_type": model.data_type,
                "file_bytes": path.stat().st_size, "threads": args.threads, "kernels": model.kernel_path,
                "logit_tokens": len(prompt),
                "max_abs_dlogit": float(np.abs(ours - theirs).max()),
                "logit_scale": float(np.abs(theirs).max()),
            }
            if kind in ("F32", "F16") and args.exact:
                exact = exact_logits(args.arch, args.shape, kind, prompt)
                row["ours_vs_exact_max_abs_dlogit"] = float(np.abs(ours - exact).max())
                row["llama_cpp_vs_exact_max_abs_dlogit"] = float(np.abs(theirs - exact).max())
            if kind not in ("F32", "F16") and f16_prompt_logits is not None:
                row["llama_vs_its_f16_max_abs_dlogit"] = float(np.abs(theirs - f16_prompt_logits).max())
                row["within_llama_quantization_gap"] = row["max_abs_dlogit"] <= row["llama_vs_its_f16_max_abs_dlogit"]
            if chunks > 0:
                ours_ppl = model.perplexity(text, ctx=args.ctx, max_chunks=chunks).perplexity
                llama_ppl = perplexity_of(llama.logits, tokens, args.ctx, chunks)
                row.update(ppl_ctx=args.ctx, ppl_chunks=chunks, ppl_ours=ours_ppl, ppl_llama_cpp=llama_ppl,
                           ppl_relative_difference=abs(ours_ppl - llama_ppl) / llama_ppl)
            decode, prompt_s = our_speed(model, tokens, args.runs, args.decode_tokens)
            l_decode, l_prompt = llama.speed(tokens, args.runs, args.decode_tokens)
            row.update(
                decode_ms_ours=round(decode * 1e3, 3), decode_ms_llama_cpp=round(l_decode * 1e3, 3),
                prompt_tok_s_ours=round(1 / prompt_s, 1), prompt_tok_s_llama_cpp=round(1 / l_prompt, 1),
                decode_speedup=round(l_decode / decode, 3), prompt_speedup=round(l_prompt / prompt_s, 3),
            )
            del llama
        print(json.dumps({k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v)
                          for k, v in row.items()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
