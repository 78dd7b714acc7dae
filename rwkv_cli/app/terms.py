"""The library's parameter names, said as the `rwkv-cpp` flags that set them.

The core names what is wrong in its own terms (`top_p must be in (0, 1]`); a command-line user
set it with `--top-p`, so errors that reach the command line are reworded here, in the app
layer, and the library stays free of command-line words.
"""

from __future__ import annotations

import re

# Parameter of the Python API -> the flag (or words) of the command line.
PARAMETER_FLAGS = {
    "gpu_offload": "--gpu",
    "top_p": "--top-p",
    "max_tokens": "--max-tokens",
    "threads": "--threads",
    "temperature": "--temperature",
    "seed": "--seed",
    "stop": "--stop",
    "tokenizer": "--tokenizer",
    "init_state": "the saved state",
    "n_vocab": "vocabulary size",
}
# Whole phrases first: advice that names a Python call.
PHRASES = (
    ("pass tokenizer=<name or path>", "pass --tokenizer NAME or FILE"),
    ("pass tokenizer=<path of the file>", "pass --tokenizer FILE"),
    ("use gpu_offload=0", "leave out --gpu"),
)
# Names with an underscore are never English, so they are replaced wherever they stand; the
# others ("stop", "seed", "tokenizer"...) only as `name=` or as the subject that opens a message.
_IDENTIFIER = re.compile(
    r"(?<![-\w])(" + "|".join(p for p in PARAMETER_FLAGS if "_" in p) + r")\b(=(?=\S))?"
)
_WORD = re.compile(
    r"(?<![-\w])(" + "|".join(p for p in PARAMETER_FLAGS if "_" not in p)
    + r")(?:(=)(?=\S)|(?=\s(?:must|has|is)\b))"
)


def cli_terms(message: str) -> str:
    """`message` with the API's parameter names replaced by the command line's flags."""
    for phrase, replacement in PHRASES:
        message = message.replace(phrase, replacement)

    def flag(match: re.Match) -> str:
        return PARAMETER_FLAGS[match.group(1)] + (" " if match.group(2) else "")

    message = _IDENTIFIER.sub(flag, message)
    return _WORD.sub(flag, message)
