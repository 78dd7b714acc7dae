"""Listings as tables that never cut a name or a path short.

In a terminal, a rich table that wraps long cells (a model name or path is folded onto the
next line, never replaced by an ellipsis). Piped or redirected, plain aligned columns as
wide as their widest cell, so `grep` and `cut` see every name whole.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

Column = tuple[str, str]  # (header, "left" | "right" | "center")


def print_table(console: Console, title: str, columns: Sequence[Column],
                rows: Sequence[Sequence[str]]) -> None:
    """`rows` hold rich markup; it is dropped (and the text kept) when not in a terminal."""
    if console.is_terminal:
        table = Table(title=title, title_justify="left")
        for header, justify in columns:
            table.add_column(header, justify=justify, overflow="fold")  # type: ignore[arg-type]
        for row in rows:
            table.add_row(*row)
        console.print(table)
        return
    plain = [[Text.from_markup(cell).plain for cell in row] for row in rows]
    headers = [header for header, _ in columns]
    widths = [max([len(headers[i])] + [len(row[i]) for row in plain]) for i in range(len(columns))]

    def line(cells: Sequence[str]) -> str:
        parts = []
        for (_, justify), width, cell in zip(columns, widths, cells):
            parts.append(cell.rjust(width) if justify == "right" else cell.ljust(width))
        return "  ".join(parts).rstrip()

    if title:
        print(title)
    print(line(headers))
    for row in plain:
        print(line(row))
