"""The engine layer: the cffi binding of the C API in native/rwkv.h.

`Library` binds one loaded engine (ours, compiled into this package, or an external rwkv.cpp
`librwkv.so`), one Python method per C function; it adds nothing but argument checks and
errors raised as exceptions.
"""

from .library import (
    Context,
    Library,
    RWKVError,
    bundled_library_path,
    default_library,
    describe_flags,
)

__all__ = [
    "Context",
    "Library",
    "RWKVError",
    "bundled_library_path",
    "default_library",
    "describe_flags",
]
