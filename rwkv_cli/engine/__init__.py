"""The engine layer: the cffi binding of the C API in native/rwkv.h.

`Library` binds one loaded engine (ours, compiled into this package, or an external rwkv.cpp
`librwkv.so`), one Python method per C function, with raw context pointers; it adds nothing
but argument checks and errors raised as `RWKVError`. `Context` owns one context and frees
it. The declarations are generated from rwkv.h (`header.py`).
"""

from ..errors import RWKVError
from .context import Context
from .library import (
    ContextPointer,
    Library,
    bundled_library_path,
    default_library,
    describe_flags,
)

__all__ = [
    "Context",
    "ContextPointer",
    "Library",
    "RWKVError",
    "bundled_library_path",
    "default_library",
    "describe_flags",
]
