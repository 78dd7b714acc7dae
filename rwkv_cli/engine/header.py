"""The cffi declarations, generated from the C header `rwkv.h` (no hand copy to keep in step).

The build (native/build_ffi.py) compiles the binding from `cdef_from_header(native/rwkv.h)`
and puts a copy of the header in this package, so that `Library(path)` can declare the same
functions when it dlopen()s an external rwkv.cpp library. A function added to rwkv.h appears
in both without any other change.

cffi reads plain C declarations only: this drops comments, preprocessor lines (keeping
`#define NAME <integer>` constants, which cffi understands), the `extern "C"` guard and the
`RWKV_API` export marker.

No imports from the package: the build script loads this file on its own.
"""

from __future__ import annotations

import re
from pathlib import Path

HEADER_NAME = "rwkv.h"
EXPORT_MARKER = "RWKV_API"

_BLOCK_COMMENT = re.compile(r"/\*.*?\*/", re.DOTALL)
_LINE_COMMENT = re.compile(r"//[^\n]*")
_DIRECTIVE = re.compile(r"#\s*(\w+)\s*(.*)$")
_INTEGER_DEFINE = re.compile(r"#\s*define\s+[A-Za-z_]\w*\s+\(?-?(0x[0-9A-Fa-f]+|\d+)[uUlL]*\)?\s*$")


def _is_cplusplus_only(directive: str, condition: str) -> bool:
    """Whether the branch a conditional opens is compiled only by C++ compilers."""
    if "__cplusplus" not in condition:
        return False
    negated = directive == "ifndef" or "!" in condition
    return not negated


def cdef_from_header(text: str) -> str:
    """The declarations of a C header as cffi's `cdef` takes them."""
    text = _BLOCK_COMMENT.sub(" ", text)
    text = _LINE_COMMENT.sub("", text)
    lines = []
    # One entry per open conditional: [is about __cplusplus, current branch is C++ only].
    # The `extern "C" {` guard and its closing brace sit in `#ifdef __cplusplus` branches.
    open_blocks: list[list[bool]] = []
    for line in text.splitlines():
        stripped = line.strip()
        in_cplusplus = any(cxx for _, cxx in open_blocks)
        directive = _DIRECTIVE.match(stripped)
        if directive:
            word, condition = directive.group(1), directive.group(2)
            if word in ("if", "ifdef", "ifndef"):
                open_blocks.append(["__cplusplus" in condition, _is_cplusplus_only(word, condition)])
            elif word == "elif" and open_blocks:
                open_blocks[-1][1] = _is_cplusplus_only(word, condition)
            elif word == "else" and open_blocks and open_blocks[-1][0]:
                open_blocks[-1][1] = not open_blocks[-1][1]
            elif word == "endif" and open_blocks:
                open_blocks.pop()
            elif word == "define" and not in_cplusplus and _INTEGER_DEFINE.match(stripped):
                lines.append(stripped)
            continue
        if not in_cplusplus:
            lines.append(line)
    body = re.sub(rf"\b{EXPORT_MARKER}\b\s*", "", "\n".join(lines))
    return "\n".join(line.rstrip() for line in body.splitlines() if line.strip()) + "\n"


def function_names(text: str) -> list[str]:
    """Names of the functions a header exports (declared with RWKV_API), in order."""
    text = _BLOCK_COMMENT.sub(" ", _LINE_COMMENT.sub("", text))
    declarations = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    return re.findall(rf"\b{EXPORT_MARKER}\b[^;(]*?\b(\w+)\s*\(", declarations)


def packaged_header() -> Path:
    """The copy of native/rwkv.h that the build puts beside this module."""
    return Path(__file__).with_name(HEADER_NAME)
