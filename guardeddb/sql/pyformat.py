"""The text a pyformat driver sends when it is given parameters.

psycopg (``Cursor``, ``ClientCursor``, ``ServerCursor``) and PyMySQL rewrite
a statement executed with parameters, even ``()``: ``%%`` becomes ``%`` and
each ``%s``/``%b``/``%t``/``%(name)s`` becomes ``$n`` (psycopg, bound on the
server) or a quoted literal (psycopg's ClientCursor, PyMySQL). The scan is
over the raw text, strings and comments included. Without parameters they
send the text as written.

Analyzing the text as written would read ``999 %% s`` as ``999 %`` and a
placeholder where the server reads ``999 % s``, ``s`` a column: a column
hidden from masking and from ``columns:`` rules. So a statement executed
with parameters is analyzed as the driver sends it (``analysis.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Converted", "convert"]

# psycopg/_queries.py _re_placeholder, on text: ``%`` and the next character
# (not a newline: psycopg's pattern has no DOTALL), or ``%(name)`` and one.
_PLACEHOLDER = re.compile(r"%(?:\(([^)]+)\).|.)")
_FORMATS = frozenset("sbt")
# What may not touch a placeholder: the driver writes ``$1`` or a literal
# with no space, so ``regexp%s`` is the identifier ``regexp$1`` (or
# ``regexp1``), and ``'a'%s`` one string ``'a''x'`` with the quote inside.
_GLUE = re.compile(r"[\w$'\"`.\\]")


@dataclass(frozen=True, slots=True)
class Converted:
    """One text as the driver sends it, in two spellings of its placeholders."""

    #: for sqlglot: ``%%`` as ``%``, every placeholder as `` ? `` (a value)
    analyzed: str
    #: for PostgreSQL's parser: ``%%`` as ``%``, every placeholder as ``$1``
    server: str
    #: (offset in ``analyzed``, offset in the original text, the placeholder as written)
    placeholders: tuple[tuple[int, int, str], ...]
    #: a placeholder written against a name, a number or a quote, which the
    #: driver's value would join (``regexp%s``); '' when there is none
    glued: str = ""


def convert(text: str) -> Converted:
    """``text`` as a pyformat driver given parameters sends it.

    A ``%`` the drivers refuse (``%d``, ``% s``, ``%(`` unclosed) is kept as
    written: psycopg raises before sending anything, and PyMySQL's other
    conversions are refused by ``_surface.placement``, which reads the
    original text with the driver's own grammar.
    """
    analyzed: list[str] = []
    server: list[str] = []
    marks: list[tuple[int, int, str]] = []
    size = 0  # length of ``analyzed`` so far
    cur = 0
    glued = ""
    for m in _PLACEHOLDER.finditer(text):
        start, end = m.span()
        plain = text[cur:start]
        analyzed.append(plain)
        server.append(plain)
        size += len(plain)
        spec = m.group(0)
        if spec == "%%":
            analyzed.append("%")
            server.append("%")
            size += 1
        elif spec[-1] in _FORMATS and (len(spec) == 2 or m.group(1) is not None):
            # spaced: ``%s::int`` must not read as ``?::`` nor ``%s|`` as ``?|``
            marks.append((size + 1, start, spec))
            if not glued and (
                (start and text[start - 1] != "%" and _GLUE.match(text, start - 1))
                or (end < len(text) and _GLUE.match(text, end))
            ):
                glued = spec
            analyzed.append(" ? ")
            server.append("$1")
            size += 3
        else:
            analyzed.append(spec)
            server.append(spec)
            size += len(spec)
        cur = end
    if not cur:
        return Converted(text, text, ())
    analyzed.append(text[cur:])
    server.append(text[cur:])
    return Converted("".join(analyzed), "".join(server), tuple(marks), glued)
