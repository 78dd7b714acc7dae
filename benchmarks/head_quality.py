"""What quantizing the head costs: perplexity, KL divergence and top-1 agreement against the
float file, for quantized bodies with the head kept FP16 (rwkv.cpp's files) and quantized too
(`rwkv-cpp quantize --head`), as JSON lines.

Each model file (FP32 or FP16, rwkv.cpp format) is quantized to every body type x head type
into a temporary folder, then scored on a text with the float file as the reference (the
measure of `rwkv-cpp perplexity --reference`: llama.cpp's perplexity, the mean KL divergence
from the reference's distribution, and how often both put the same token first).

    python benchmarks/head_quality.py                          # the trained tiny fixtures
    python benchmarks/head_quality.py --models a-FP16.bin,b-FP16.bin --text book.txt
    python benchmarks/head_quality.py --table run.jsonl        # JSON lines -> markdown
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from rwkv_cli import RWKV
from rwkv_cli.formats.convert import quantize

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures" / "rwkv-cpp-tiny"
DEFAULT_MODELS = [FIXTURES / f"tiny-rwkv-{name}-FP16.bin" for name in ("4v0-660K", "5v1-730K", "5v2-730K", "7v0-834K")]


def score(model_path: Path, reference: RWKV, text: str, ctx: int, max_chunks: int | None) -> dict:
    with RWKV(str(model_path), threads=1) as model:
        result = model.perplexity(text, ctx=ctx, reference=reference, max_chunks=max_chunks)
        return {
            "perplexity": round(result.perplexity, 4),
            "kl_divergence": float(f"{result.kl_divergence:.3g}"),  # tiny: 3 significant digits
            "top1_agreement": round(result.top1_agreement, 4),
            "reference_perplexity": round(result.reference_perplexity, 4),
            "scored_tokens": result.scored_tokens,
            "file_bytes": model_path.stat().st_size,
            "head_type": model.head_type,
        }


COLUMNS = [("model", "model"), ("body", "body"), ("head_type", "head"), ("perplexity", "perplexity"),
           ("reference_perplexity", "float"), ("kl_divergence", "KL"), ("top1_agreement", "top-1"),
           ("file_bytes", "bytes")]


def markdown_table(path: str) -> str:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.startswith("{")]
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(row.get(key, "")) for key, _ in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(str(p) for p in DEFAULT_MODELS),
                        help="comma list of FP32/FP16 rwkv.cpp files (default: the tiny fixtures)")
    parser.add_argument("--text", default=str(REPO / "README.md"), help="the text to score")
    parser.add_argument("--bodies", default="Q8_0,Q5_1,Q4_0")
    parser.add_argument("--heads", default="FP16,Q8_0,Q5_1,Q4_0", help="FP16: the head as the source has it")
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--max-chunks", type=int, default=None)
    parser.add_argument("--table", metavar="JSONL", help="print the markdown table of a saved run and exit")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown_table(args.table))
        return 0
    text = Path(args.text).read_text(encoding="utf-8", errors="replace")
    with tempfile.TemporaryDirectory() as folder:
        for source in (Path(p) for p in args.models.split(",")):
            with RWKV(str(source), threads=1) as reference:
                for body in args.bodies.split(","):
                    for head in args.heads.split(","):
                        out = Path(folder) / f"{source.stem}-{body}-{head}.bin"
                        quantize(source, out, body, head_type=None if head == "FP16" else head)
                        row = {"model": source.name, "body": body, "head": head}
                        row.update(score(out, reference, text, args.ctx, args.max_chunks))
                        print(json.dumps(row), flush=True)
                        out.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
