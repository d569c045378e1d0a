"""nginx: a file of `upstream NAME { server ADDR [PARAMS] [down]; ... }` blocks (and
whatever else the operator keeps there) included by the main config; `nginx -t` validates,
`nginx -s reload` reloads (new workers; old ones finish what they hold). With
`config_file`, both commands name it with `-c`.

Marking down appends ` down` after a server's last parameter; marking up removes that
word; a new server line (`server ADDR;`) goes after the block's last server line, with
its indentation. Nothing else in the file changes.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from reliability.balancers.base import (
    Balancer,
    Block,
    MembershipError,
    Server,
    ServerLine,
    line_of,
    whole_lines,
)

_COMMENT = re.compile(r"#[^\n]*")
# A quoted string, a brace or semicolon, or a bare word.
_TOKEN = re.compile(r"\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|[{};]|[^\s{};\"']+")
_INDENT = "    "


class Nginx(Balancer):
    kind = "nginx"
    block_kind = "upstream"
    settle = 0.25  # old workers accept for ~0.1 s after `-s reload` returns

    def _conf(self) -> list[str]:
        return ["-c", self.lb.config_file] if self.lb.config_file else []

    def blocks(self, text: str) -> dict[str, Block]:
        return read_upstreams(text)

    def server_text(self, server: Server) -> str:
        weight = "" if server.weight is None else self.weight_text(server.weight)
        return f"server {server.address}{weight};"

    def weight_text(self, weight: int) -> str:
        if weight < 1:
            raise MembershipError(f"nginx weights are 1 or more, not {weight}")
        return f" weight={weight}"

    def validate_command(self) -> str:
        return shlex.join(["nginx", "-t", *self._conf()])

    def reload_command(self) -> str:
        return shlex.join(["nginx", *self._conf(), "-s", "reload"])


@dataclass(slots=True)
class _Statement:
    """`words;` or `words { body }`: each word with its span; `end`: after its `;` or `}`."""

    words: list[str]
    spans: list[tuple[int, int]]
    body: list[_Statement] | None = None
    end: int = 0
    close: int = 0  # a block's `}`

    @property
    def start(self) -> int:
        return self.spans[0][0]


def read_upstreams(text: str) -> dict[str, Block]:
    """Every `upstream` block of an nginx file, by name (other statements are left alone).
    MembershipError for a file nginx could not parse, an upstream without one name, a
    block inside an upstream, a `server` without an address, or two upstreams of a name."""
    found: dict[str, Block] = {}
    for statement in _statements(text):
        if statement.body is None or statement.words[0] != "upstream":
            continue
        line = line_of(text, statement.start)
        if len(statement.words) != 2:
            raise MembershipError(f"`upstream` takes one name, not {statement.words[1:]}", line)
        name = statement.words[1]
        if name in found:
            raise MembershipError(f"a second `upstream {name}`", line)
        found[name] = _block(text, name, line, statement)
    return found


def _block(text: str, name: str, line: int, upstream: _Statement) -> Block:
    servers = []
    last: _Statement | None = None
    for inner in upstream.body or []:
        at = line_of(text, inner.start)
        if inner.body is not None:
            raise MembershipError(f"a block inside the upstream ({inner.words[0]})", at)
        if inner.words[0] != "server":
            continue  # keepalive, zone, least_conn...: not membership
        if len(inner.words) < 2:
            raise MembershipError("`server` without an address", at)
        servers.append(_server_line(text, inner, at))
        last = inner
    if last is not None:
        span = whole_lines(text, last.start, last.end)
        first = text.rfind("\n", 0, last.start) + 1
        if span is not None:
            add_at, indent = span[1], text[first : last.start]
            before = "" if text[:add_at].endswith("\n") else "\n"
            return Block(name, line, tuple(servers), add_at, indent, before)
        # Servers share a line with other statements: the new one goes on a line of its own.
        return Block(name, line, tuple(servers), last.end, _INDENT, "\n")
    # No server yet: before the `}`, one level in from the `upstream` line.
    first = text.rfind("\n", 0, upstream.start) + 1
    indent = text[first : upstream.start] + _INDENT
    close_line = text.rfind("\n", 0, upstream.close) + 1
    if text[close_line : upstream.close].strip():
        return Block(name, line, (), upstream.close, indent, "\n")
    return Block(name, line, (), close_line, indent)


def _server_line(text: str, statement: _Statement, line: int) -> ServerLine:
    words, spans = statement.words, statement.spans
    params = words[2:]
    at = next((i for i, p in enumerate(params, start=2) if p.startswith("weight=")), None)
    weight = None
    if at is not None:
        try:
            weight = int(words[at][len("weight=") :])
        except ValueError:
            raise MembershipError(f"`{words[at]}` is not a whole weight", line) from None
    server = Server(words[1], down="down" in params, weight=weight, backup="backup" in params)
    whole = whole_lines(text, statement.start, statement.end)
    remove = whole if whole is not None else (statement.start, statement.end)
    after_last = spans[-1][1]
    weight_at = (after_last, after_last) if at is None else (spans[at - 1][1], spans[at][1])
    mark_down = None if server.down else (after_last, after_last, " down")
    mark_up = None
    if server.down:
        i = 2 + params.index("down")
        mark_up = (spans[i - 1][1], spans[i][1], "")  # the word and the blanks before it
    return ServerLine(server, line, remove, mark_down, mark_up, weight_at)


def _statements(text: str) -> list[_Statement]:
    """nginx's syntax: `words;` or `words { statements }`, comments skipped."""
    # Comments are blanked, not removed, so offsets stay true.
    blanked = _COMMENT.sub(lambda m: " " * len(m[0]), text)
    stack: list[list[_Statement]] = [[]]
    opened: list[_Statement] = []
    current = _Statement([], [])
    for m in _TOKEN.finditer(blanked):
        token, line = m[0], line_of(text, m.start())
        if token == ";":
            if not current.words:
                raise MembershipError("`;` with no directive before it", line)
            current.end = m.end()
            stack[-1].append(current)
            current = _Statement([], [])
        elif token == "{":
            if not current.words:
                raise MembershipError("`{` with no directive before it", line)
            opened.append(current)
            stack.append([])
            current = _Statement([], [])
        elif token == "}":
            if current.words or not opened:
                raise MembershipError("unexpected `}`", line)
            block = opened.pop()
            block.body, block.end, block.close = stack.pop(), m.end(), m.start()
            stack[-1].append(block)
        else:
            current.words.append(token[1:-1] if token[0] in "\"'" else token)
            current.spans.append(m.span())
    if current.words or opened:
        raise MembershipError("unexpected end of file (a `;` or `}` is missing)")
    return stack[0]
