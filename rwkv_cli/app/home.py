"""The rwkv-cpp home folder (`~/.rwkv`, or `RWKV_HOME`): installed models and their registry.

Layout:
    models/            installed model files (rwkv.cpp format)
    downloads/         downloads in progress (`*.part`) and checkpoints awaiting conversion
    synthetic/         random-weight benchmark models (`--dragon` with nothing installed)
    20B_tokenizer.json the GPT-NeoX 20B tokenizer, fetched for RWKV-4 Pile/Raven models
    models.json        the registry: installed models and which one was installed last
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

from ..errors import FileMissing, UserError
from ..paths import rwkv_home, tokenizer_20b_path  # noqa: F401 (the app reaches them here)

REGISTRY_FILE = "models.json"


class RegistryError(UserError):
    """The registry file exists but cannot be read."""


def models_dir() -> Path:
    return rwkv_home() / "models"


def downloads_dir() -> Path:
    return rwkv_home() / "downloads"


def synthetic_dir() -> Path:
    return rwkv_home() / "synthetic"


@dataclass
class InstalledModel:
    """One model in the registry."""

    name: str
    path: str
    arch: str = ""
    data_type: str = ""
    n_vocab: int = 0
    n_layer: int = 0
    n_embed: int = 0
    file_size: int = 0
    tokenizer: str = "auto"
    tokenizer_path: str = ""
    prompt_format: str = ""
    title: str = ""
    source: str = ""
    installed_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())

    @property
    def exists(self) -> bool:
        return Path(self.path).is_file()


@dataclass
class Registry:
    models: dict[str, InstalledModel] = field(default_factory=dict)
    last: str | None = None


def _registry_path() -> Path:
    return rwkv_home() / REGISTRY_FILE


def _installed_model(name: str, entry: object) -> InstalledModel:
    """One registry entry, its fields checked against InstalledModel's types (unknown ones are
    ignored: a newer version may have added them)."""
    if not isinstance(entry, dict):
        raise TypeError(f"entry {name!r} is a {type(entry).__name__}, not an object")
    values = {}
    for spec in fields(InstalledModel):
        if spec.name not in entry:
            continue
        value, wanted = entry[spec.name], int if spec.type == "int" else str
        if not isinstance(value, wanted) or isinstance(value, bool):
            raise TypeError(
                f"entry {name!r}: {spec.name} is {value!r}, expected {wanted.__name__}"
            )
        values[spec.name] = value
    missing = [key for key in ("name", "path") if key not in values]
    if missing:
        raise ValueError(f"entry {name!r} lacks {' and '.join(missing)}")
    return InstalledModel(**values)


def load_registry() -> Registry:
    path = _registry_path()
    if not path.exists():
        return Registry()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise TypeError(f"the file holds a {type(raw).__name__}, not an object")
        entries = raw.get("models", {})
        if not isinstance(entries, dict):
            raise TypeError(f"'models' is a {type(entries).__name__}, not an object")
        models = {name: _installed_model(name, entry) for name, entry in entries.items()}
        last = raw.get("last")
        if last is not None and not isinstance(last, str):
            raise TypeError(f"'last' is {last!r}, not a model name")
    except (OSError, ValueError, TypeError) as exc:
        raise RegistryError(f"cannot read the model registry {path}: {exc}") from exc
    return Registry(models=models, last=last if last in models else None)


def save_registry(registry: Registry) -> None:
    path = _registry_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "last": registry.last,
        "models": {name: asdict(model) for name, model in registry.models.items()},
    }
    # Write then rename, so a crash never leaves a half-written registry.
    fd, tmp = tempfile.mkstemp(prefix=".models-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def register_model(model: InstalledModel, make_last: bool = True) -> None:
    registry = load_registry()
    registry.models[model.name] = model
    if make_last:
        registry.last = model.name
    save_registry(registry)


def set_last(name: str) -> None:
    registry = load_registry()
    if name not in registry.models:
        raise KeyError(name)
    registry.last = name
    save_registry(registry)


def installed_models() -> list[InstalledModel]:
    return list(load_registry().models.values())


def find_model(name: str) -> InstalledModel | None:
    return load_registry().models.get(name)


def last_model() -> InstalledModel | None:
    """The last installed model that is still on disk (falls back to the newest such one)."""
    registry = load_registry()
    if registry.last and registry.models[registry.last].exists:
        return registry.models[registry.last]
    present = [m for m in registry.models.values() if m.exists]
    if not present:
        return None
    return max(present, key=lambda m: m.installed_at)


class NoModelError(UserError):
    """No model to run: none installed, or the name asked for is not installed."""


@dataclass
class ModelChoice:
    """The model a command will run, and how to talk to it."""

    name: str
    path: Path
    tokenizer: str = "auto"
    prompt_format: str = ""  # "" = decide from the vocabulary once loaded
    synthetic: bool = False


def resolve_model(model_path: str | os.PathLike | None = None,
                  model_name: str | None = None) -> ModelChoice:
    """The model for `--model-path`, `--model NAME`, or else the last installed one."""
    if model_path is not None:
        path = Path(model_path).expanduser()
        if not path.is_file():
            raise FileMissing(f"model file not found: {path}")
        for entry in load_registry().models.values():
            if Path(entry.path) == path.resolve() or Path(entry.path) == path:
                return _choice(entry)
        return ModelChoice(name=path.name, path=path)
    if model_name is not None:
        registry = load_registry()
        entry = registry.models.get(model_name)
        if entry is None:
            names = ", ".join(registry.models) or "none"
            raise NoModelError(
                f"no installed model named {model_name!r} (installed: {names}); "
                "`rwkv-cpp models` lists them, `rwkv-cpp --setup` adds one"
            )
        if not entry.exists:
            raise NoModelError(
                f"model {model_name!r} is registered but its file is gone: {entry.path}; "
                f"run `rwkv-cpp --setup --model ...` to install it again"
            )
        return _choice(entry)
    entry = last_model()
    if entry is None:
        raise NoModelError(
            f"no model installed (in {rwkv_home()}): run `rwkv-cpp --setup` to download one, "
            "or pass --model-path FILE"
        )
    return _choice(entry)


def _choice(entry: InstalledModel) -> ModelChoice:
    tokenizer = entry.tokenizer_path
    if not tokenizer or not Path(tokenizer).is_file():
        tokenizer = "auto"  # the model layer looks in RWKV_HOME and says what is missing
    return ModelChoice(name=entry.name, path=Path(entry.path), tokenizer=tokenizer,
                       prompt_format=entry.prompt_format)
