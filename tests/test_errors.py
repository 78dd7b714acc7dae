"""One error base: every exception class the package defines derives from RWKVError, and the
command prints any of them as one line."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pkgutil

import pytest

import rwkv_cli
from rwkv_cli import RWKVError, UserError
from rwkv_cli.app.cli import _user_message
from rwkv_cli.errors import FileMissing, InvalidArgument


def package_modules():
    for info in pkgutil.walk_packages(rwkv_cli.__path__, "rwkv_cli."):
        if info.name.endswith("__main__"):
            continue  # running it would start the command
        spec = importlib.util.find_spec(info.name)
        if spec is None or not (spec.origin or "").endswith(".py"):
            continue  # the compiled engine and the plain C library are not Python modules
        yield importlib.import_module(info.name)


def public_exception_classes():
    found = {}
    for module in package_modules():
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == module.__name__
                and not name.startswith("_")
            ):
                found[f"{module.__name__}.{name}"] = value
    return found


def test_the_walk_finds_the_known_error_classes():
    names = set(public_exception_classes())
    for expected in (
        "rwkv_cli.formats.modelfile.ModelFileError",
        "rwkv_cli.formats.pth.ConversionError",
        "rwkv_cli.app.catalog.CatalogError",
        "rwkv_cli.app.download.DownloadError",
        "rwkv_cli.app.home.NoModelError",
        "rwkv_cli.app.home.RegistryError",
        "rwkv_cli.app.chat.ChatError",
        "rwkv_cli.app.setup_wizard.SetupError",
        "rwkv_cli.app.cli.CLIError",
    ):
        assert expected in names, expected


def test_every_error_class_derives_from_rwkv_error():
    strays = [name for name, cls in public_exception_classes().items() if not issubclass(cls, RWKVError)]
    assert strays == []


def test_user_errors_keep_the_builtin_types_callers_catch():
    assert issubclass(InvalidArgument, ValueError) and issubclass(InvalidArgument, UserError)
    assert issubclass(FileMissing, FileNotFoundError) and issubclass(FileMissing, UserError)
    from rwkv_cli.formats.modelfile import ModelFileError

    assert issubclass(ModelFileError, ValueError) and issubclass(ModelFileError, UserError)


@pytest.mark.parametrize("name", sorted(public_exception_classes()))
def test_the_command_prints_every_package_error_as_its_message(name):
    cls = public_exception_classes()[name]
    try:
        error = cls("something the user can fix")
    except TypeError:  # a class that takes more arguments
        signature = inspect.signature(cls.__init__)
        extra = [p for p in list(signature.parameters)[2:]]
        error = cls("something the user can fix", *["x"] * len(extra))
    assert _user_message(error) == "something the user can fix"


def test_engine_errors_keep_their_flags():
    error = RWKVError("bad magic", flags=(2 << 8) | 6)
    assert error.flags == 0x206 and _user_message(error) == "bad magic"
