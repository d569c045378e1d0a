"""Placeholders in runbook text (`{node}`, `{service.lb_url}`) and how each kind of field
renders them.

The shell rule: in a command, a placeholder always becomes exactly one shell-quoted word
(`shlex.quote`); there is no raw form to ask for. Text the shell would read inside quotes or
a here-document is never substituted, and the loader refuses a known placeholder there, so a
value like `; rm -rf /` or `$(reboot)` can only ever arrive as a literal argument.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote as url_quote

Kind = Literal["shell", "url", "text", "name", "image"]
Context = Literal["word", "single-quoted", "double-quoted", "here-document"]
Path = tuple[str, ...]
Resolve = Callable[[Path], str]

PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)*)\}")
# Programs that run an argument as shell code: a quoted word given to them is code again.
_SHELLS = {"sh", "bash", "dash", "zsh", "ksh", "su"}


@dataclass(frozen=True, slots=True)
class TemplateField:
    """Marks a model field as a template and says how its placeholders render."""

    kind: Kind


@dataclass(frozen=True, slots=True)
class Placeholder:
    path: Path
    start: int
    end: int
    context: Context


def placeholders(text: str) -> list[Placeholder]:
    """Every placeholder of a non-shell template (all of them are substituted)."""
    return [
        Placeholder(tuple(m.group(1).split(".")), m.start(), m.end(), "word")
        for m in PLACEHOLDER.finditer(text)
    ]


def shell_placeholders(text: str) -> list[Placeholder]:
    """The placeholders of a shell command, each with where the shell would read it.

    A small POSIX-sh lexer: quotes, backslash escapes, `${...}` (the shell's own expansion,
    never a placeholder) and `<<` (the rest is a here-document). `\\{x}` is a literal brace.
    """
    found: list[Placeholder] = []
    state: Context = "word"
    i = 0
    while i < len(text):
        c = text[i]
        m = PLACEHOLDER.match(text, i) if c == "{" else None
        if m:
            found.append(Placeholder(tuple(m.group(1).split(".")), i, m.end(), state))
            i = m.end()
            continue
        if state == "here-document":
            i += 1
        elif state == "single-quoted":
            state = "word" if c == "'" else state
            i += 1
        elif c == "\\":
            i += 2
        elif text.startswith("${", i):
            end = text.find("}", i)
            i = len(text) if end < 0 else end + 1
        elif state == "double-quoted":
            state = "word" if c == '"' else state
            i += 1
        elif c in "'\"":
            state = "single-quoted" if c == "'" else "double-quoted"
            i += 1
        elif text.startswith("<<", i):
            state = "here-document"
            i += 2
        else:
            i += 1
    return found


def shell_problems(text: str, known: Callable[[str], bool]) -> Iterator[str]:
    """Why a command template could let a value be read as code; nothing when it cannot.
    `known(name)` says whether a placeholder's first name is a parameter or `target`."""
    found = shell_placeholders(text)
    for p in found:
        name = "{" + ".".join(p.path) + "}"
        if p.context == "word":
            continue
        if known(p.path[0]):
            yield (
                f"{name} is {p.context}; write it outside quotes, it is shell-quoted for you"
                if p.context != "here-document"
                else f"{name} is in a here-document, where the shell would expand it; "
                "pass it as an argument instead"
            )
    words = re.split(r"[\s;&|()`]+", PLACEHOLDER.sub(" ", text))
    runs_code = "eval" in words or "ssh" in words
    runs_code |= "-c" in words and any(w.rsplit("/", 1)[-1] in _SHELLS for w in words)
    if runs_code and any(p.context == "word" for p in found):
        yield (
            "a placeholder reaches a program that runs its argument as shell code (eval, ssh, "
            "sh -c); quoting cannot protect it there. Run the program directly instead"
        )


def render(text: str, kind: Kind, resolve: Resolve) -> str:
    """`text` with its placeholders replaced as `kind` requires:

    - shell: each one a single shell-quoted word; inside quotes nothing is replaced.
    - url: percent-encoded, unless the whole field is one placeholder (a URL itself).
    - text, name, image: the value as it is (messages, names checked later, image refs).
    """
    if kind == "shell":
        found = [p for p in shell_placeholders(text) if p.context == "word"]
        quote: Callable[[str], str] = shlex.quote
    else:
        found = placeholders(text)
        whole = len(found) == 1 and found[0].start == 0 and found[0].end == len(text)
        quote = (lambda v: url_quote(v, safe="")) if kind == "url" and not whole else str
    out, pos = [], 0
    for p in found:
        out += [text[pos : p.start], quote(resolve(p.path))]
        pos = p.end
    out.append(text[pos:])
    return "".join(out)
