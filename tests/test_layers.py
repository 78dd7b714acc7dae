"""The package's layers: each imports only from the ones below it.

    app  >  core  >  formats  >  engine        (`errors`, `paths`, `version`: importable by all)

The package root (`rwkv_cli/__init__.py`, the public face) and `__main__` sit above everything
and no layer imports them. Imports are read with `ast` from the installed sources, including
imports inside functions and under TYPE_CHECKING.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import rwkv_cli

PACKAGE = "rwkv_cli"
LAYERS = {"engine": 1, "formats": 2, "core": 3, "app": 4}
BASE_MODULES = {"errors", "paths", "version"}
BASE, FACADE = 0, 5
LAYER_NAMES = {0: "a base module", 1: "engine", 2: "formats", 3: "core", 4: "app", 5: "the root"}


def layer_of(module: str) -> int:
    """The layer of a module of the package; KeyError for one that belongs to none."""
    parts = module.split(".")
    if parts == [PACKAGE] or parts[1:] == ["__main__"]:
        return FACADE
    if len(parts) == 2 and parts[1] in BASE_MODULES:
        return BASE
    return LAYERS[parts[1]]


def module_name(root: Path, path: Path) -> str:
    relative = path.relative_to(root.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(module: str, is_package: bool, tree: ast.AST, known: set[str]) -> list[str]:
    """The package modules a module imports (`from pkg import sub` counts as `pkg.sub`)."""
    found = []
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                if node.level > 1:
                    base = base[: -(node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                found.append(candidate if candidate in known else target)
    return [name for name in found if name == PACKAGE or name.startswith(PACKAGE + ".")]


def violations(sources: dict[str, tuple[bool, str]]) -> list[str]:
    """`sources`: module name -> (is a package, source text). Every import that reaches up
    (or into the root), as 'importer -> imported'."""
    known = set(sources)
    problems = []
    for module, (is_package, text) in sorted(sources.items()):
        level = layer_of(module)
        for target in imported_modules(module, is_package, ast.parse(text), known):
            target_level = layer_of(target)
            if target_level > level or (target_level == FACADE and level != FACADE):
                problems.append(
                    f"{module} ({LAYER_NAMES[level]}) imports {target} ({LAYER_NAMES[target_level]})"
                )
    return problems


def package_sources() -> dict[str, tuple[bool, str]]:
    root = Path(rwkv_cli.__file__).parent
    return {
        module_name(root, path): (path.name == "__init__.py", path.read_text(encoding="utf-8"))
        for path in sorted(root.rglob("*.py"))
    }


def test_every_module_belongs_to_a_layer():
    sources = package_sources()
    assert {"rwkv_cli.engine.library", "rwkv_cli.core.model", "rwkv_cli.app.cli"} <= set(sources)
    for module in sources:
        layer_of(module)  # KeyError names a module outside every layer


def test_no_layer_imports_a_higher_one():
    assert violations(package_sources()) == []


@pytest.mark.parametrize(
    "module, source",
    [
        ("rwkv_cli.engine.library", "from ..core import model\n"),
        ("rwkv_cli.formats.convert", "def later():\n    from rwkv_cli.app.cli import main\n"),
        ("rwkv_cli.core.model", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..app import home\n"),
        ("rwkv_cli.errors", "from .engine import Library\n"),
        ("rwkv_cli.core.generate", "from .. import RWKV\n"),
        ("rwkv_cli.formats.modelfile", "import rwkv_cli.core.tokenizer\n"),
    ],
)
def test_the_check_catches_an_import_that_reaches_up(module, source):
    sources = package_sources()
    sources[module] = (False, source)
    problems = violations(sources)
    assert len(problems) == 1 and problems[0].startswith(module), problems


def test_the_check_allows_imports_downwards_and_of_base_modules():
    sources = package_sources()
    sources["rwkv_cli.app.chat"] = (False, "from ..core import model\nfrom ..errors import UserError\n")
    sources["rwkv_cli.engine.library"] = (False, "from ..paths import rwkv_home\nfrom . import header\n")
    assert violations(sources) == []
