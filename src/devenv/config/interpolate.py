"""Variable interpolation as Docker Compose does it, for devenv.yaml and env files.

    ${VAR}  $VAR        the value ("" and a warning when unset)
    ${VAR:-default}     default when VAR is unset or empty; ${VAR-default}: only when unset
    ${VAR:+alt}         alt when VAR is set and not empty; ${VAR+alt}: when set
    ${VAR:?message}     an error when VAR is unset or empty; ${VAR?message}: when unset
    $$                  a literal $

Defaults, alternatives and messages are templates themselves (`${A:-${B}}`), evaluated only
when used. A `$` followed by anything else is kept as it is. `bare=False` keeps `$VAR`
literal too (devenv.yaml: commands read `$PORT` at run time, in the service's shell).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

Lookup = Callable[[str], str | None]
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
OPS = (":-", ":+", ":?", "-", "+", "?")  # two-character ones first
HINT = "set it in your shell or .env"


class TemplateError(Exception):
    """A value that cannot be interpolated; `reason` says why, for the user."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RequiredError(TemplateError):
    """`${VAR?message}` or `${VAR:?message}` with VAR missing (or, with `:?`, empty)."""

    def __init__(self, name: str, message: str, empty: bool) -> None:
        what = "is required but empty" if empty else "is required"
        note = f" (message: {message})" if message else ""
        super().__init__(f"{name} {what}: {HINT}{note}")
        self.name = name
        self.message = message


@dataclass(frozen=True)
class _Ref:
    name: str
    op: str  # "" or one of OPS
    arg: tuple[_Node, ...] = ()


_Node = str | _Ref


def substitute(text: str, lookup: Lookup, *, bare: bool = True,
               unset: set[str] | None = None) -> str:
    """`text` with every reference replaced; the names of plain references that were unset
    are added to `unset`. A TemplateError when a required variable is missing or a `${` is
    malformed."""
    if "$" not in text:
        return text
    nodes, _ = _parse(text, 0, nested=False, bare=bare)
    return _evaluate(nodes, lookup, unset)


def _parse(text: str, i: int, *, nested: bool, bare: bool) -> tuple[list[_Node], int]:
    """The nodes from `i` on; nested (a default's text), up to the `}` that closes it."""
    nodes: list[_Node] = []
    literal: list[str] = []
    depth = 0  # braces opened in a default's literal text, as Compose counts them

    def flush() -> None:
        if literal:
            nodes.append("".join(literal))
            literal.clear()

    n = len(text)
    while i < n:
        c = text[i]
        if nested and c == "}":
            if depth == 0:
                flush()
                return nodes, i + 1
            depth -= 1
        elif nested and c == "{":
            depth += 1
        if c != "$":
            literal.append(c)
            i += 1
            continue
        nxt = text[i + 1:i + 2]
        if nxt == "$":
            literal.append("$")
            i += 2
        elif nxt == "{":
            ref, i = _braced(text, i, bare)
            flush()
            nodes.append(ref)
        elif bare and (m := NAME.match(text, i + 1)):
            flush()
            nodes.append(_Ref(m.group(), ""))
            i = m.end()
        else:
            literal.append("$")
            i += 1
    if nested:
        raise TemplateError(_malformed(text, None))
    flush()
    return nodes, i


def _braced(text: str, start: int, bare: bool) -> tuple[_Ref, int]:
    """The `${...}` at `start`, and where it ends."""
    m = NAME.match(text, start + 2)
    if not m:
        raise TemplateError(_malformed(text, start))
    name, j = m.group(), m.end()
    if text.startswith("}", j):
        return _Ref(name, ""), j + 1
    op = next((o for o in OPS if text.startswith(o, j)), None)
    if op is None:
        raise TemplateError(_malformed(text, start))
    try:
        arg, end = _parse(text, j + len(op), nested=True, bare=bare)
    except TemplateError:
        raise TemplateError(_malformed(text, start)) from None
    return _Ref(name, op, tuple(arg)), end


def _malformed(text: str, start: int | None) -> str:
    shown = text if start is None else text[start:]
    close = shown.find("}")
    shown = shown[:close + 1] if close >= 0 else shown
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return (f"'{shown}' is not a valid ${{VAR}} reference (a name of letters, digits and _, "
            "then }, :-, -, :+, +, :? or ?, closed by }); write $$ for a literal $")


def _evaluate(nodes: list[_Node] | tuple[_Node, ...], lookup: Lookup,
              unset: set[str] | None) -> str:
    out: list[str] = []
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
            continue
        value = lookup(node.name)
        op = node.op
        strict = op.startswith(":")  # an empty value counts as missing
        present = value is not None and (value != "" or not strict)
        if op == "":
            if value is None and unset is not None:
                unset.add(node.name)
            out.append(value or "")
        elif op in (":-", "-"):
            out.append(value if present and value is not None
                       else _evaluate(node.arg, lookup, unset))
        elif op in (":+", "+"):
            out.append(_evaluate(node.arg, lookup, unset) if present else "")
        else:  # ":?", "?"
            if not present or value is None:
                message = _evaluate(node.arg, lookup, None).strip()
                raise RequiredError(node.name, message, empty=value is not None)
            out.append(value)
    return "".join(out)
