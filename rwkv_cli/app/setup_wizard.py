"""`rwkv-cpp --setup`: pick a model from the catalog, download, convert, quantize, install.

Interactive with questionary in a terminal; `--model NAME --yes` runs without questions. The
download resumes a `.part` left by an earlier run; `.pth` checkpoints are converted to FP16 and
quantized to the chosen type, and the intermediates are removed. A model is registered only
after its file has been verified and read back as an rwkv.cpp model.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from ..errors import UserError
from . import home
from .catalog import QUANT_TYPES, Catalog, CatalogError, CatalogModel, discover, load_catalog
from .download import (
    DownloadError,
    check_free_space,
    download,
    download_first,
    human_bytes,
    part_path,
    sha256_of,
)
from .model_files import convert_with_progress, quantize_with_progress
from .tables import print_table


class SetupError(UserError):
    """Setup could not finish; the message says what to do."""


# ---- progress ----


def _download_progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def _fetch(
    console: Console,
    label: str,
    urls: list[str],
    dest: Path,
    size: int | None,
    sha256: str | None,
) -> Path:
    with _download_progress(console) as progress:
        task = progress.add_task(label, total=size)

        def update(done: int, total: int | None) -> None:
            progress.update(task, completed=done, total=total)

        def notify(text: str) -> None:
            progress.console.print(text, highlight=False, soft_wrap=True)

        options = {"expected_size": size, "sha256": sha256, "progress": update,
                   "notify": notify, "backoff": _env_float("RWKV_DOWNLOAD_BACKOFF", 1.0)}
        if len(urls) == 1:
            return download(urls[0], dest, **options)
        return download_first(urls, dest, **options)


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name, "")
    try:
        return float(value) if value else default
    except ValueError:
        raise SetupError(f"{name} must be a number of seconds, not {value!r}") from None


# ---- listings ----


def _installed_names() -> set[str]:
    """Names of the installed models on disk; none when the registry is unreadable (a
    listing does not need it; the commands that do say how to repair it)."""
    try:
        return {m.name for m in home.installed_models() if m.exists}
    except home.RegistryError:
        return set()


def catalog_rows(catalog: Catalog) -> list[dict]:
    """The catalog as plain records (`setup --list --json`)."""
    installed = _installed_names()
    rows = []
    for model in catalog.models:
        rows.append({
            "name": model.name, "title": model.title, "arch": model.arch,
            "tokenizer": model.tokenizer, "format": model.format, "type": model.quantization,
            "downloadBytes": model.size or model.download_size,
            "fileBytes": model.model_bytes(), "ramBytes": model.ram_bytes(),
            "notes": model.notes, "installed": model.installed_name() in installed,
            "repo": model.repo, "file": model.file,
        })
    return rows


def show_catalog(console: Console, catalog: Catalog | None = None, refresh: bool = False,
                 base_url: str | None = None, json_output: bool = False) -> None:
    catalog = catalog or load_catalog()
    if refresh:
        _add_discovered(console, catalog, base_url, quiet=json_output)
    rows = catalog_rows(catalog)
    if json_output:
        print(json.dumps(rows))
        return
    columns = [("name", "left"), ("model", "left"), ("arch", "center"), ("tokenizer", "center"),
               ("type", "center"), ("download", "right"), ("RAM", "right"), ("notes", "left")]
    table = [
        [row["name"] + (" [green](installed)[/]" if row["installed"] else ""), row["title"],
         f"v{row['arch']}", row["tokenizer"], row["type"], human_bytes(row["downloadBytes"]),
         human_bytes(row["ramBytes"]), row["notes"]]
        for row in rows
    ]
    print_table(console, "Models rwkv-cpp can install", columns, table)
    console.print("RAM: the model file + 100 MB runtime + the tokenizer (World 255 MB, 20B 50 MB).",
                  highlight=False, soft_wrap=True)
    console.print("Install one with: [bold]rwkv-cpp setup --model NAME --yes[/]", soft_wrap=True)


# ---- the wizard ----


def _add_discovered(console: Console, catalog: Catalog, base_url: str | None,
                    quiet: bool = False) -> int:
    """Add checkpoints published since the catalog was written; how many were added."""
    if quiet:
        found = discover(catalog, base_url)
    else:
        with console.status("Checking Hugging Face for new models...", spinner="dots"):
            found = discover(catalog, base_url)
    catalog.models.extend(found)
    return len(found)


def _interactive() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()


def _ask(question):
    answer = question.ask()  # None when the user pressed Ctrl-C
    if answer is None:
        raise SetupError("setup cancelled")
    return answer


def _pick_model(catalog: Catalog) -> CatalogModel:
    import questionary

    installed = _installed_names()
    choices = []
    width = max(len(m.title) for m in catalog.models)
    for model in catalog.models:
        mark = "  (installed)" if model.installed_name() in installed else ""
        label = (
            f"{model.title:<{width}}  v{model.arch:<3} {model.tokenizer:<5} "
            f"{human_bytes(model.download_size):>8} download  "
            f"~{human_bytes(model.ram_bytes()):>8} RAM{mark}"
        )
        # The notes are shown under the list for the highlighted entry.
        choices.append(questionary.Choice(title=label, value=model.name,
                                          description=model.notes or None))
    name = _ask(questionary.select("Which model?", choices=choices, use_shortcuts=False))
    return catalog.get(name)


def _pick_type(model: CatalogModel) -> str:
    import questionary

    choices = []
    for type_name in QUANT_TYPES:
        hint = " (recommended)" if type_name == model.quantization else ""
        label = (
            f"{type_name:<5} file ~{human_bytes(model.model_bytes(type_name)):>8}, "
            f"RAM ~{human_bytes(model.ram_bytes(type_name)):>8}{hint}"
        )
        choices.append(questionary.Choice(title=label, value=type_name))
    return _ask(
        questionary.select(
            "Quantization (smaller is faster and uses less memory, at some quality cost):",
            choices=choices,
            default=next(c for c in choices if c.value == model.quantization),
        )
    )


def ensure_tokenizer(console: Console, catalog: Catalog, model: CatalogModel,
                     base_url: str | None) -> Path | None:
    """Download the tokenizer file the model needs (once); its path, or None if none needed."""
    asset = catalog.tokenizer_asset(model.tokenizer)
    if asset is None:
        return None
    dest = home.tokenizer_20b_path()
    if dest.is_file() and (not asset.sha256 or sha256_of(dest) == asset.sha256):
        return dest
    console.print(f"Downloading the {model.tokenizer} tokenizer ({asset.file}).")
    return _fetch(console, asset.file, asset.download_urls(base_url), dest, asset.size,
                  asset.sha256)


def describe_model(path: Path) -> dict:
    """The registry's summary of an rwkv.cpp or GGUF model file."""
    from ..formats.gguf import describe as describe_gguf
    from ..formats.gguf import is_gguf
    from ..formats.modelfile import describe

    return describe_gguf(path) if is_gguf(path) else describe(path)


def _installed_record(model: CatalogModel, path: Path, data_type: str | None,
                      tokenizer_path: Path | None, source: str) -> home.InstalledModel:
    from ..formats.gguf import GGUFError
    from ..formats.modelfile import ModelFileError

    try:
        info = describe_model(path)
    except (ModelFileError, GGUFError) as exc:
        path.unlink(missing_ok=True)
        hint = ""
        if "old block layout" in str(exc) or "version 100" in str(exc):
            hint = " This pre-quantized file uses rwkv.cpp's old format; pick the .pth entry instead."
        raise SetupError(f"the downloaded file is not a usable model: {exc}.{hint}") from exc
    return home.InstalledModel(
        name=model.installed_name(data_type),
        path=str(path),
        arch=info["arch"],
        data_type=info["data_type"],
        head_type=info.get("head_type", ""),
        n_vocab=info["n_vocab"],
        n_layer=info["n_layer"],
        n_embed=info["n_embed"],
        file_size=info["file_size"],
        tokenizer=str(tokenizer_path) if tokenizer_path else "auto",
        tokenizer_path=str(tokenizer_path or ""),
        prompt_format=model.prompt_format,
        title=model.title,
        source=source,
        catalog_name=model.name,
    )


def run_setup(
    console: Console,
    name: str | None = None,
    yes: bool = False,
    data_type: str | None = None,
    base_url: str | None = None,
    head_type: str | None = None,
) -> home.InstalledModel:
    """Install a catalog model; returns its registry record (also made the default).
    `head_type` quantizes the head too when a .pth model is quantized (`--head-type Q8_0`:
    faster decoding; off by default, as rwkv.cpp's quantizer keeps the head FP16)."""
    from ..formats.convert import ConversionError, check_head_type

    check_base_url(base_url)
    try:
        head_type = check_head_type(head_type)
    except ConversionError as exc:
        raise SetupError(str(exc).replace("head quantization type", "--head-type")) from exc
    catalog = load_catalog()
    home.load_registry()  # a broken registry stops the setup before anything is downloaded
    interactive = _interactive() and not yes
    if name is None:
        if not _interactive():
            raise SetupError(
                "no terminal to pick a model in: pass --model NAME --yes "
                "(`rwkv-cpp setup --list` shows the names)"
            )
        _add_discovered(console, catalog, base_url)
        model = _pick_model(catalog)
    else:
        try:
            model = catalog.get(name)
        except CatalogError:
            if not _add_discovered(console, catalog, base_url):
                raise
            model = catalog.get(name)

    if model.is_checkpoint:
        if data_type is None:
            data_type = _pick_type(model) if interactive else model.quantization
        data_type = data_type.upper()
        if data_type not in QUANT_TYPES:
            raise SetupError(f"--type must be one of {', '.join(QUANT_TYPES)}, not {data_type!r}")
    elif data_type is not None and data_type.upper() != model.quantization:
        raise SetupError(
            f"{model.name} is a ready-made {model.quantization} file; --type {data_type} "
            "applies to .pth models only"
        )
    else:
        data_type = None
    if head_type is not None and (data_type is None or data_type in ("FP16", "FP32")):
        raise SetupError(
            f"--head-type quantizes the head of a .pth model quantized with --type (Q8_0, Q5_1, "
            f"...); {model.name} " + ("is a ready-made file, installed as it is" if data_type is None
                                      else f"is installed as {data_type}")
        )
    # the file and registry name say what the head is when it is not the usual FP16
    label = data_type if head_type is None else f"{data_type}-head-{head_type}"

    target = home.models_dir() / model.installed_file(label)
    existing = home.find_model(model.installed_name(label))
    if existing is not None and existing.exists:
        home.set_last(existing.name)
        console.print(f"{model.title} is already installed at {existing.path}; it is now the "
                      "default model. Chat with it: [bold]rwkv-cpp[/]")
        return existing

    if _is_model_file(target) and (model.is_checkpoint or not model.sha256
                                   or sha256_of(target) == model.sha256):
        # Installed before (the registry was lost or reset): register the file as it is.
        record = _installed_record(model, target, label, None, model.url(base_url))
        record.tokenizer_path = str(ensure_tokenizer(console, catalog, model, base_url) or "")
        record.tokenizer = record.tokenizer_path or "auto"
        home.register_model(record)
        console.print(f"Found {record.name} already in {home.models_dir()}: registered it "
                      "without downloading; it is now the default model.")
        return record

    console.print(
        f"[bold]{model.title}[/] (RWKV v{model.arch}, {model.tokenizer} tokenizer): "
        f"download {human_bytes(model.download_size)}"
        + (f", converted and quantized to {data_type}" if model.is_checkpoint else "")
        + (f" (the head to {head_type})" if head_type else "")
        + f", about {human_bytes(model.ram_bytes(data_type))} of RAM to run. "
        f"Installing into {home.models_dir()}."
    )
    if interactive:
        import questionary

        if not _ask(questionary.confirm("Continue?", default=True)):
            raise SetupError("setup cancelled")

    home.make_dir(home.models_dir())
    download_dir = home.downloads_dir() if model.is_checkpoint else home.models_dir()
    home.make_dir(download_dir)
    download_dest = download_dir / model.file
    have = part_path(download_dest).stat().st_size if part_path(download_dest).exists() else 0
    check_free_space(home.models_dir(), max(0, model.disk_bytes(data_type) - have))

    tokenizer_path = ensure_tokenizer(console, catalog, model, base_url)
    url = model.url(base_url)
    if not download_dest.is_file():
        _fetch(console, model.file, [url], download_dest, model.size, model.sha256)

    if model.is_checkpoint:
        assert data_type is not None
        fp16 = home.downloads_dir() / f"{model.installed_name('FP16')}.bin"
        try:
            if data_type == "FP16":
                convert_with_progress(console, download_dest, target, "FP16", force=True)
            else:
                convert_with_progress(console, download_dest, fp16, "FP16", force=True)
                quantize_with_progress(console, fp16, target, data_type, force=True,
                                       head_type=head_type)
        finally:
            fp16.unlink(missing_ok=True)
        download_dest.unlink(missing_ok=True)  # the checkpoint is no longer needed

    record = _installed_record(model, target, label, tokenizer_path, url)
    home.register_model(record)
    head = f", head {record.head_type}" if head_type else ""
    console.print(
        f"[bold green]Installed[/] {record.name} (v{record.arch}, {record.data_type}{head}, "
        f"{human_bytes(record.file_size)}) at {record.path}\n"
        "Chat with it: [bold]rwkv-cpp[/]    benchmark it: [bold]rwkv-cpp --dragon[/]"
    )
    return record


def _is_model_file(path: Path) -> bool:
    from ..formats.modelfile import ModelFileError, read_header

    try:
        return path.is_file() and read_header(path) is not None
    except (ModelFileError, OSError):
        return False


def check_base_url(base_url: str | None) -> None:
    """A mirror must be an http(s) URL with a host; say so before anything is fetched."""
    from urllib.parse import urlsplit

    for value, name in ((base_url, "--base-url"),
                        (os.environ.get("RWKV_DOWNLOAD_BASE"), "RWKV_DOWNLOAD_BASE")):
        if not value:
            continue
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SetupError(
                f"{name} must be an http(s) address like https://huggingface.co or "
                f"http://host:8000/mirror, not {value!r}"
            )
        break  # --base-url wins over the variable


__all__ = [
    "DownloadError",
    "SetupError",
    "ensure_tokenizer",
    "run_setup",
    "show_catalog",
]
