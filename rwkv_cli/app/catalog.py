"""The catalog of real models the setup wizard offers (data in `catalog.json`).

Each entry names a file in a Hugging Face repository. `.pth` checkpoints (published by the
model authors) are converted and quantized locally after the download; `.bin` entries
(rwkv.cpp files) and `.gguf` entries (llama.cpp's RWKV-6 / RWKV-7 files) are used as they are.

Overrides, for mirrors and tests:
- `RWKV_CATALOG=/path/catalog.json` replaces the built-in catalog;
- `RWKV_DOWNLOAD_BASE=https://mirror` (or `--base-url`) serves every file at
  `{base}/{repo}/resolve/main/{file}`, the Hugging Face layout.

New checkpoints appear every few months: `discover()` lists the catalog's repositories through
the Hugging Face API (`{base}/api/models/{repo}?blobs=true`) and offers the `.pth` files (in the
repositories of `.pth` entries) and `.gguf` files (in those of `.gguf` entries) the built-in
list does not know yet; offline, the built-in list is all there is.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from ..core.chat_format import PROMPT_FORMATS
from ..errors import UserError
from ..formats.tensor_types import GGUF_TYPES, QUANTIZED_TYPES, TENSOR_TYPES

HF_BASE = "https://huggingface.co"
BUILTIN_CATALOG = Path(__file__).with_name("catalog.json")

# Bytes stored per weight in a file of each type: rwkv.cpp's, the GGUF types the engine runs,
# and llama.cpp's _S/_M/_L mixes of K-quants (roughly, from their usual composition).
BYTES_PER_WEIGHT = {t.name: t.bytes_per_value for t in TENSOR_TYPES}
BYTES_PER_WEIGHT.update({t.label: t.bytes_per_value for t in GGUF_TYPES if t.runs})
BYTES_PER_WEIGHT.update({"Q5_K_S": 176 / 256, "Q5_K_M": 0.71, "Q4_K_S": 144 / 256,
                         "Q4_K_M": 0.61, "Q3_K_S": 110 / 256, "Q3_K_M": 0.49, "Q3_K_L": 0.53,
                         "Q2_K_S": 84 / 256})
# What a checkpoint can be installed as, largest first.
QUANT_TYPES = ("FP16",) + tuple(sorted(QUANTIZED_TYPES, key=lambda name: -BYTES_PER_WEIGHT[name]))
FORMATS = ("pth", "bin", "gguf")

TOKENIZERS = ("world", "20B", "bytes")

# The RAM estimate, from peak resident sets measured with `benchmarks/ram.py` (a child process
# running `rwkv-cpp complete` on random-weight models; README, "RAM estimates"):
# - the model file, whole: files of 64 MB to 2 GiB are read into memory at load (2 MiB
#   pages, native/model.c), other files are memory-mapped and every token reads all of them
#   but the embedding (read row by row, so counting it whole keeps the estimate safe);
# - the runtime: Python and its libraries, the engine, and the engine's per-context buffers
#   (sequence-mode scratch, logits, states: a few MB up to the 1.5B shape); 62 MB measured
#   with a 0.1 MB model, and with the tokenizer's share taken off 67-97 MB from 0.1B to 0.4B;
# - the tokenizer's tables: World 254 MB (its Rust matcher's trie), GPT-NeoX 20B 49 MB.
RUNTIME_BYTES = 100_000_000
TOKENIZER_BYTES = {"world": 255_000_000, "20B": 50_000_000, "bytes": 0}
TOKENIZER_VOCAB = {"world": 65536, "20B": 50277, "bytes": 256}


def estimate_ram_bytes(file_bytes: int, tokenizer: str) -> int:
    """Peak memory of `rwkv-cpp` running a model file of `file_bytes` with that tokenizer
    (measured: 0.3-3% above the peaks of the 0.1B and 0.4B shapes)."""
    return file_bytes + RUNTIME_BYTES + TOKENIZER_BYTES.get(tokenizer, 0)


class CatalogError(UserError, ValueError):
    """The catalog file is missing, malformed, or does not name what was asked for."""


@dataclass
class Asset:
    """A file a model needs besides its weights (the 20B tokenizer)."""

    name: str
    repo: str
    file: str
    urls: list[str] = field(default_factory=list)
    sha256: str | None = None
    size: int | None = None

    def download_urls(self, base_url: str | None = None) -> list[str]:
        base = base_url or os.environ.get("RWKV_DOWNLOAD_BASE")
        if base:
            return [hf_url(self.repo, self.file, base)]
        return list(self.urls) or [hf_url(self.repo, self.file)]


@dataclass
class CatalogModel:
    """One model a user can pick."""

    name: str
    title: str
    arch: str
    tokenizer: str
    repo: str
    file: str
    format: str
    download_size: int
    quantization: str
    prompt_format: str = "world"
    notes: str = ""
    sha256: str | None = None
    size: int | None = None  # exact download size, when known
    n_embed: int = 0  # the embedding width, when known: the embedding and head stay FP16

    @property
    def is_checkpoint(self) -> bool:
        return self.format == "pth"

    @property
    def parameters(self) -> float:
        # Published checkpoints are bf16: two bytes per parameter.
        if self.is_checkpoint:
            return self.download_size / 2
        return self.download_size / BYTES_PER_WEIGHT.get(self.quantization, 2.0)

    def url(self, base_url: str | None = None) -> str:
        return hf_url(self.repo, self.file, base_url)

    def installed_name(self, data_type: str | None = None) -> str:
        if not self.is_checkpoint:
            return self.name
        return f"{self.name}-{data_type or self.quantization}"

    def installed_file(self, data_type: str | None = None) -> str:
        if not self.is_checkpoint:
            return self.file
        return f"{self.installed_name(data_type)}.bin"

    def model_bytes(self, data_type: str | None = None) -> int:
        """Approximate size of the installed model file."""
        if not self.is_checkpoint:
            return self.size or self.download_size
        data_type = data_type or self.quantization
        parameters = self.parameters
        if data_type not in QUANTIZED_TYPES:
            return int(parameters * BYTES_PER_WEIGHT[data_type])
        # A quantized file keeps the embedding and the head in FP16 (as rwkv.cpp's quantizer
        # does): at a 65536 vocabulary and 768 wide, two thirds of the 0.1B model.
        kept = min(parameters, 2 * TOKENIZER_VOCAB[self.tokenizer] * self.n_embed)
        return int(kept * BYTES_PER_WEIGHT["FP16"]
                   + (parameters - kept) * BYTES_PER_WEIGHT[data_type])

    def ram_bytes(self, data_type: str | None = None) -> int:
        """Approximate memory needed to run it (see `estimate_ram_bytes`)."""
        return estimate_ram_bytes(self.model_bytes(data_type), self.tokenizer)

    def disk_bytes(self, data_type: str | None = None) -> int:
        """Peak disk use while installing: download, FP16 intermediate and the result."""
        if not self.is_checkpoint:
            return self.size or self.download_size
        fp16 = self.model_bytes("FP16")
        return self.download_size + fp16 + self.model_bytes(data_type)


@dataclass
class Catalog:
    models: list[CatalogModel]
    assets: dict[str, Asset]
    source: Path

    def get(self, name: str) -> CatalogModel:
        for model in self.models:
            if model.name == name:
                return model
        wanted = name.lower()
        for model in self.models:
            if model.name.lower() == wanted or model.title.lower() == wanted:
                return model
        names = ", ".join(m.name for m in self.models)
        raise CatalogError(f"no model named {name!r} in the catalog; choose one of: {names}")

    def tokenizer_asset(self, tokenizer: str) -> Asset | None:
        if tokenizer == "20B":
            asset = self.assets.get("20B_tokenizer")
            if asset is None:
                raise CatalogError(f"{self.source}: no '20B_tokenizer' asset for 20B models")
            return asset
        return None


def hf_url(repo: str, file: str, base_url: str | None = None) -> str:
    base = (base_url or os.environ.get("RWKV_DOWNLOAD_BASE") or HF_BASE).rstrip("/")
    # `%` and spaces occur in real file names; they must be percent-encoded.
    return f"{base}/{repo}/resolve/main/{quote(file)}"


def _require(entry: dict, key: str, where: str):
    if key not in entry:
        raise CatalogError(f"{where}: missing key {key!r}")
    return entry[key]


def _parse_model(entry: dict, where: str) -> CatalogModel:
    if not isinstance(entry, dict):
        raise CatalogError(f"{where}: expected an object, got {type(entry).__name__}")
    name = _require(entry, "name", where)
    where = f"{where} ({name})"
    fmt = _require(entry, "format", where)
    if fmt not in FORMATS:
        raise CatalogError(f"{where}: format must be one of {FORMATS}, not {fmt!r}")
    tokenizer = entry.get("tokenizer", "world")
    if tokenizer not in TOKENIZERS:
        raise CatalogError(f"{where}: tokenizer must be one of {TOKENIZERS}, not {tokenizer!r}")
    quant = entry.get("quantization", "Q8_0")
    if quant not in BYTES_PER_WEIGHT:
        raise CatalogError(f"{where}: unknown quantization {quant!r}")
    prompt_format = entry.get("prompt_format", "world")
    if prompt_format not in PROMPT_FORMATS:
        raise CatalogError(f"{where}: prompt_format must be one of {tuple(PROMPT_FORMATS)}")
    return CatalogModel(
        name=name,
        title=entry.get("title", name),
        arch=str(_require(entry, "arch", where)),
        tokenizer=tokenizer,
        repo=_require(entry, "repo", where),
        file=_require(entry, "file", where),
        format=fmt,
        download_size=int(_require(entry, "download_size", where)),
        quantization=quant,
        prompt_format=prompt_format,
        notes=entry.get("notes", ""),
        sha256=entry.get("sha256"),
        size=entry.get("size"),
        n_embed=int(entry.get("n_embed", 0)),
    )


def load_catalog(path: Path | None = None) -> Catalog:
    """The catalog from `path`, `$RWKV_CATALOG`, or the built-in file."""
    source = Path(path or os.environ.get("RWKV_CATALOG") or BUILTIN_CATALOG)
    try:
        raw = json.loads(source.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CatalogError(f"cannot read the model catalog {source}: {exc.strerror}") from exc
    except ValueError as exc:
        raise CatalogError(f"the model catalog {source} is not valid JSON: {exc}") from exc
    entries = raw.get("models")
    if not isinstance(entries, list) or not entries:
        raise CatalogError(f"{source}: expected a non-empty list under 'models'")
    models = [_parse_model(entry, f"{source} models[{i}]") for i, entry in enumerate(entries)]
    assets = {}
    for key, entry in (raw.get("assets") or {}).items():
        where = f"{source} assets.{key}"
        assets[key] = Asset(
            name=key,
            repo=_require(entry, "repo", where),
            file=_require(entry, "file", where),
            urls=list(entry.get("urls", [])),
            sha256=entry.get("sha256"),
            size=entry.get("size"),
        )
    # A test or mirror catalog without assets still gets the built-in tokenizer asset.
    if "20B_tokenizer" not in assets and source != BUILTIN_CATALOG:
        assets.update(load_catalog(BUILTIN_CATALOG).assets)
    return Catalog(models=models, assets=assets, source=source)


def _family_defaults(catalog: Catalog, repo: str, fmt: str) -> CatalogModel | None:
    known = [m for m in catalog.models if m.repo == repo and m.format == fmt]
    return known[-1] if known else None


# llama.cpp's type labels as they appear in GGUF file names
_GGUF_LABEL = re.compile(
    r"(?:^|[-_.])(f16|bf16|f32|q8_0|q6_k|q5_k_[sm]|q5_k|q5_[01]|q4_k_[sm]|q4_k|q4_[01]|"
    r"q3_k_[sml]|q3_k|q2_k_s|q2_k)(?=[-_.]|$)",
    re.IGNORECASE,
)


def gguf_quantization(file: str) -> str:
    """The type label a GGUF file name carries ("Q4_K_M"; "FP16" for f16), or "GGUF"."""
    found = _GGUF_LABEL.findall(Path(file).stem)
    if not found:
        return "GGUF"
    label = found[-1].upper()
    return {"F16": "FP16", "F32": "FP32"}.get(label, label)


def _default_quantization(download_size: int) -> str:
    # bf16 checkpoints: 2 bytes per parameter; Q8_0 up to ~2B parameters, Q5_1 above.
    return "Q8_0" if download_size <= 4_500_000_000 else "Q5_1"


def discover(catalog: Catalog, base_url: str | None = None, timeout: float = 4.0,
             transport=None) -> list[CatalogModel]:
    """Checkpoints in the catalog's repositories that the catalog does not list yet.

    Never raises for network trouble: offline (or on any API error) the answer is [].
    `RWKV_OFFLINE=1` skips the look-up.
    """
    import httpx

    if os.environ.get("RWKV_OFFLINE", "") not in ("", "0"):
        return []
    base = (base_url or os.environ.get("RWKV_DOWNLOAD_BASE") or HF_BASE).rstrip("/")
    repos = list(dict.fromkeys(m.repo for m in catalog.models if m.format in ("pth", "gguf")))
    known_files = {(m.repo, m.file) for m in catalog.models}
    known_names = {m.name for m in catalog.models}
    found: list[CatalogModel] = []
    try:
        client = httpx.Client(timeout=timeout, follow_redirects=True, transport=transport)
    except Exception:  # noqa: BLE001 - discovery is optional by design
        return []
    with client:
        for repo in repos:
            try:
                response = client.get(f"{base}/api/models/{repo}", params={"blobs": "true"})
                if response.status_code != 200:
                    continue
                siblings = response.json().get("siblings", [])
            except httpx.TransportError:
                break  # offline or unreachable: the other repositories would be too
            except (httpx.HTTPError, ValueError, AttributeError):
                continue
            families = {fmt: _family_defaults(catalog, repo, fmt) for fmt in ("pth", "gguf")}
            known = [m for m in catalog.models if m.repo == repo and m.n_embed]
            for sibling in siblings:
                file = sibling.get("rfilename", "") if isinstance(sibling, dict) else ""
                size = sibling.get("size") if isinstance(sibling, dict) else None
                fmt = Path(file).suffix[1:]
                family = families.get(fmt)
                if family is None or (repo, file) in known_files:
                    continue
                if not isinstance(size, int) or size <= 0 or "/" in file:
                    continue
                stem = file[: -len(fmt) - 1]
                name = re.sub(r"[^a-z0-9.]+", "-", stem.lower()).strip("-")
                if name in known_names:
                    continue
                lfs = sibling.get("lfs")
                sha256 = lfs.get("sha256") if isinstance(lfs, dict) else None
                found.append(CatalogModel(
                    name=name, title=f"{stem} (new)", arch=family.arch,
                    tokenizer=family.tokenizer, repo=repo, file=file, format=fmt,
                    download_size=size,
                    quantization=_default_quantization(size) if fmt == "pth" else gguf_quantization(file),
                    prompt_format=family.prompt_format,
                    notes=f"found on {repo}; not in the built-in catalog", size=size,
                    sha256=sha256 if isinstance(sha256, str) and len(sha256) == 64 else None,
                    # the width of the catalog's model nearest in size: for the RAM estimate
                    n_embed=min(known, key=lambda m: abs(m.download_size - size)).n_embed
                    if known else 0,
                ))
                known_names.add(name)
    return found
