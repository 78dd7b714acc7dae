"""The exceptions this package raises on purpose (a base module: every layer may import it).

`RWKVError` is the base of all of them, so a program (or the `rwkv-cpp` command) catches one
class. A failure reported by the C engine is an `RWKVError` carrying rwkv.cpp's error `flags`.
`UserError` marks what the person running the code can fix (a bad option, a missing or broken
file, a failed download); its message names the thing and what was expected.

Where Python code has long caught a built-in exception (`ValueError` for bad options,
`FileNotFoundError` for missing files), the class derives from that too, so such code keeps
working.
"""

from __future__ import annotations


class RWKVError(RuntimeError):
    """Base of every error raised by rwkv_cli; `flags` holds the engine's error flags (0 when
    the error did not come from the engine)."""

    def __init__(self, message: str = "", flags: int = 0):
        super().__init__(message)
        self.flags = flags


class UserError(RWKVError):
    """An error the user can act on: the message says what was wrong and where."""


class InvalidArgument(UserError, ValueError):
    """An option or argument with a value that is not accepted; `option` names the parameter
    (e.g. "top_p"), so that a command line can say which of its flags that is."""

    def __init__(self, message: str = "", option: str | None = None):
        super().__init__(message)
        self.option = option


class FileMissing(UserError, FileNotFoundError):
    """A file that should exist does not (a model, a tokenizer, a checkpoint, a library)."""


class NotAFile(UserError, IsADirectoryError):
    """A path that names a folder where a file was expected."""


class EngineNotBuilt(UserError, ImportError):
    """The package was imported from a source folder that holds no compiled engine."""

    @classmethod
    def in_package(cls, folder: str) -> EngineNotBuilt:
        return cls(
            f"rwkv_cli was imported from {folder}, which has no compiled engine (a source "
            "folder, e.g. when Python runs in the project's root): run Python from another "
            "folder to use the installed package (`pip install .`), or build it in place with "
            "`pip install -e .`"
        )
