"""The rwkv-cpp home folder (`~/.rwkv`, or `RWKV_HOME`): installed models and their registry.

Layout:
    models/            installed model files (rwkv.cpp format)
    downloads/         downloads in progress (`*.part`) and checkpoints awaiting conversion
    synthetic/         random-weight benchmark models (`--dragon` with nothing installed)
    20B_tokenizer.json the GPT-NeoX 20B tokenizer, fetched for RWKV-4 Pile/Raven models
    models.json        the registry: installed models and the default one

The registry stores paths inside the home relative to it, so a home that is moved or copied
(or reached through another mount point) keeps working. It is written to a temporary file
and renamed over the old one, so a crash never leaves it half-written; a registry that is
broken anyway blocks only the commands that need it, and they say how to repair it.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

from ..errors import FileMissing, NotAFile, UserError
from ..paths import rwkv_home, tokenizer_20b_path  # noqa: F401 (the app reaches them here)

REGISTRY_FILE = "models.json"


class RegistryError(UserError):
    """The registry file exists but cannot be read."""


class HomeNotWritable(UserError):
    """The home folder (or a folder in it) cannot be written."""


def models_dir() -> Path:
    return rwkv_home() / "models"


def downloads_dir() -> Path:
    return rwkv_home() / "downloads"


def synthetic_dir() -> Path:
    return rwkv_home() / "synthetic"


def home_variable() -> str:
    """How the user names the home folder: the variable, and where it points."""
    if os.environ.get("RWKV_HOME"):
        return f"RWKV_HOME ({rwkv_home()})"
    return f"the home folder {rwkv_home()} (set RWKV_HOME to use another)"


def not_writable(exc: OSError, path: Path | str) -> HomeNotWritable | None:
    """The one-line error for a write into the home that the system refused; None when the
    failure is something else (disk full, a file in the way...)."""
    if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
        return None
    reason = "read-only file system" if exc.errno == errno.EROFS else "permission denied"
    return HomeNotWritable(
        f"cannot write to {home_variable()}: {reason} ({path}); "
        "set RWKV_HOME to a folder you can write to"
    )


def make_dir(folder: Path) -> Path:
    """Create a folder of the home, with the one-line error when the home is read-only."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        error = not_writable(exc, folder)
        if error is not None:
            raise error from exc
        raise
    return folder


@dataclass
class InstalledModel:
    """One model in the registry (`path` and `tokenizer_path` absolute once loaded)."""

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
    catalog_name: str = ""  # the catalog entry it was installed from ("" for older records)
    head_type: str = ""  # the head's tensor type ("" for older records: read from the file)
    installed_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())

    @property
    def exists(self) -> bool:
        return Path(self.path).is_file()

    def reinstall_command(self) -> str:
        """The command that installs this model again."""
        name = self.catalog_name
        if not name:  # a record from before catalog names were kept: converted ones end in -TYPE
            suffix = f"-{self.data_type}"
            name = self.name[: -len(suffix)] if self.data_type and self.name.endswith(suffix) \
                else self.name
        type_flag = f" --type {self.data_type}" if name != self.name and self.data_type else ""
        return f"rwkv-cpp setup --model {name}{type_flag} --yes"


@dataclass
class Registry:
    models: dict[str, InstalledModel] = field(default_factory=dict)
    last: str | None = None  # the default model (the last installed, or set with `default`)


def registry_path() -> Path:
    return rwkv_home() / REGISTRY_FILE


def _stored(path: str) -> str:
    """A path as the registry stores it: relative to the home when inside it."""
    if not path:
        return path
    try:
        return Path(path).resolve().relative_to(rwkv_home().resolve()).as_posix()
    except ValueError:
        return path


def _loaded(path: str, folder: Path) -> str:
    """A stored path as an absolute one. A record from before paths were stored relative
    names the old home: when that file is gone, the same name in `folder` is used."""
    if not path:
        return path
    stored = Path(path)
    if not stored.is_absolute():
        return str(rwkv_home() / stored)
    if not stored.exists() and (folder / stored.name).exists():
        return str(folder / stored.name)
    return path


def _repair_hint(path: Path) -> str:
    return (
        f"fix it, or move it away (`mv {path} {path}.broken`) and install again with "
        "`rwkv-cpp setup --model NAME --yes` (files already in "
        f"{models_dir()} are not downloaded again); --model-path FILE works meanwhile"
    )


def _installed_model(name: str, entry: object) -> InstalledModel:
    """One registry entry, its fields checked against InstalledModel's types (unknown ones are
    ignored: a newer version may have added them), its paths made absolute."""
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
    model = InstalledModel(**values)
    model.path = _loaded(model.path, models_dir())
    model.tokenizer_path = _loaded(model.tokenizer_path, rwkv_home())
    if model.tokenizer not in ("auto", "") and model.tokenizer_path:
        model.tokenizer = model.tokenizer_path
    return model


def load_registry() -> Registry:
    path = registry_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Registry()
    except (OSError, ValueError) as exc:  # unreadable, or not UTF-8
        raise RegistryError(
            f"cannot read the model registry {path}: {exc}; {_repair_hint(path)}"
        ) from exc
    try:
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise TypeError(f"the file holds a {type(raw).__name__}, not an object")
        entries = raw.get("models", {})
        if not isinstance(entries, dict):
            raise TypeError(f"'models' is a {type(entries).__name__}, not an object")
        models = {name: _installed_model(name, entry) for name, entry in entries.items()}
        last = raw.get("last")
        if last is not None and not isinstance(last, str):
            raise TypeError(f"'last' is {last!r}, not a model name")
    except (ValueError, TypeError) as exc:
        reason = "not valid JSON" if isinstance(exc, json.JSONDecodeError) else "unexpected content"
        raise RegistryError(
            f"cannot read the model registry {path} ({reason}: {exc}); {_repair_hint(path)}"
        ) from exc
    return Registry(models=models, last=last if last in models else None)


def save_registry(registry: Registry) -> None:
    path = registry_path()
    make_dir(path.parent)
    models = {}
    for name, model in registry.models.items():
        record = asdict(model)
        record["path"] = _stored(model.path)
        record["tokenizer_path"] = _stored(model.tokenizer_path)
        if model.tokenizer not in ("auto", ""):
            record["tokenizer"] = _stored(model.tokenizer)
        models[name] = record
    payload = {"last": registry.last, "models": models}
    # Write then rename, so a crash never leaves a half-written registry.
    try:
        fd, tmp = tempfile.mkstemp(prefix=".models-", suffix=".json", dir=path.parent)
    except OSError as exc:
        error = not_writable(exc, path.parent)
        if error is not None:
            raise error from exc
        raise
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
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


def unregister_model(name: str) -> str | None:
    """Drop a model from the registry; returns the new default (None when none is left).
    A removed default passes to the newest model still on disk."""
    registry = load_registry()
    registry.models.pop(name, None)
    if registry.last == name or registry.last not in registry.models:
        present = [m for m in registry.models.values() if m.exists]
        registry.last = max(present, key=lambda m: m.installed_at).name if present else None
    save_registry(registry)
    return registry.last


def installed_models() -> list[InstalledModel]:
    return list(load_registry().models.values())


def find_model(name: str) -> InstalledModel | None:
    return load_registry().models.get(name)


def default_model(registry: Registry | None = None) -> InstalledModel | None:
    """The default model's record, whether or not its file is still there."""
    registry = registry or load_registry()
    return registry.models.get(registry.last) if registry.last else None


def last_model() -> InstalledModel | None:
    """The default model if it is on disk; else the newest installed one that is. None when
    nothing is installed, and also when the default's file is gone (`resolve_model` says so)."""
    registry = load_registry()
    default = default_model(registry)
    if default is not None:
        return default if default.exists else None
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


def _missing_file_error(entry: InstalledModel, what: str) -> NoModelError:
    return NoModelError(
        f"{what} {entry.name!r} is installed but its file is gone ({entry.path}): install it "
        f"again with `{entry.reinstall_command()}`, or remove it with `rwkv-cpp rm {entry.name}`"
    )


def check_model_file(path: Path) -> None:
    """A path given as a model must be a file: say what it is instead."""
    if path.is_dir():
        models = sorted(p.name for p in path.glob("*.bin"))[:3]
        hint = f" (it holds {', '.join(models)})" if models else ""
        raise NotAFile(f"{path} is a directory, not a model file{hint}; give the model file")
    if not path.is_file():
        raise FileMissing(f"model file not found: {path}")


def resolve_model(model_path: str | os.PathLike | None = None,
                  model_name: str | None = None) -> ModelChoice:
    """The model for `--model-path`, `--model NAME`, or else the default one."""
    if model_path is not None:
        path = Path(model_path).expanduser()
        check_model_file(path)
        try:
            entries = load_registry().models.values()
        except RegistryError:
            entries = []  # a file given by path needs no registry; its record only adds hints
        for entry in entries:
            if Path(entry.path).resolve() == path.resolve():
                return _choice(entry)
        return ModelChoice(name=path.name, path=path)
    registry = load_registry()
    if model_name is not None:
        entry = registry.models.get(model_name)
        if entry is None:
            names = ", ".join(registry.models) or "none"
            raise NoModelError(
                f"no installed model named {model_name!r} (installed: {names}); "
                "`rwkv-cpp models` lists them, `rwkv-cpp --setup` adds one"
            )
        if not entry.exists:
            raise _missing_file_error(entry, "model")
        return _choice(entry)
    default = default_model(registry)
    if default is not None and not default.exists:
        raise _missing_file_error(default, "the default model")
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
