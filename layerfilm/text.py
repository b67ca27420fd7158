"""Text as the user reads it: printable one-line paths and messages, and the one plain-text table of the
command line (scan, stability, activation statistics, --stats)."""

from __future__ import annotations

from collections.abc import Sequence


def text_table(head: Sequence[str], rows: Sequence[Sequence[str]], left: Sequence[int] = (), sep: str = "  ") -> str:
    """``head`` and ``rows`` as aligned columns, each as wide as its widest cell: right-aligned (numbers)
    except the columns in ``left``; trailing spaces removed.

    Example:
        >>> print(text_table(["block", "norm"], [["L0", "1.5"], ["L10", "12.25"]], left=[0]))
        block   norm
        L0       1.5
        L10    12.25
    """
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return "\n".join(sep.join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
                     for r in [head, *rows])


def show(path: object) -> str:
    """A path as one printable line: control characters and undecodable bytes escaped."""
    return printable(str(path))


def printable(text: str) -> str:
    """``text`` with anything unprintable (newlines, tabs, lone surrogates of undecodable file names)
    written as a backslash escape, so a message stays one line and can always be encoded."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
