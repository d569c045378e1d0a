"""nginx: an `upstream NAME { server ADDR [down]; }` file included by the main config;
`nginx -t` validates, `nginx -s reload` reloads (new workers; old ones finish what they
hold). With `config_file`, both commands name it with `-c`."""

from __future__ import annotations

import re
import shlex

from reliability.balancers.base import HEADER, Balancer, Membership, MembershipError, Server

_COMMENT = re.compile(r"#[^\n]*")
# A quoted string, a brace or semicolon, or a bare word; with its offset for line numbers.
_TOKEN = re.compile(r"\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|[{};]|[^\s{};\"']+")


class Nginx(Balancer):
    kind = "nginx"
    settle = 0.25  # old workers accept for ~0.1 s after `-s reload` returns

    def _conf(self) -> list[str]:
        return ["-c", self.lb.config_file] if self.lb.config_file else []

    def render(self, membership: Membership) -> str:
        servers = "".join(
            f"    server {s.address}{' down' if s.down else ''};\n" for s in membership.servers
        )
        return f"{HEADER}upstream {membership.backend} {{\n{servers}}}\n"

    def read_membership(self, text: str) -> Membership:
        return read_upstream(text)

    def validate_command(self) -> str:
        return shlex.join(["nginx", "-t", *self._conf()])

    def reload_command(self) -> str:
        return shlex.join(["nginx", *self._conf(), "-s", "reload"])


def read_upstream(text: str) -> Membership:
    """The membership of an nginx upstream file (see Balancer.read_membership)."""
    statements = _statements(text)
    blocks = [(words, body, line) for words, body, line in statements if body is not None]
    upstreams = [b for b in blocks if b[0][0] == "upstream"]
    if len(upstreams) != 1 or len(statements) != 1:
        found = ", ".join(f"{' '.join(w)} (line {n})" for w, _, n in statements) or "nothing"
        raise MembershipError(f"expected one `upstream NAME {{...}}` block, found: {found}")
    words, body, line = upstreams[0]
    if len(words) != 2:
        raise MembershipError(f"line {line}: `upstream` takes one name, not {words[1:]}")
    servers = []
    for inner, nested, n in body or []:
        if nested is not None:
            raise MembershipError(f"line {n}: a block inside the upstream ({inner[0]})")
        if inner[0] != "server":
            continue  # keepalive, zone, least_conn...: not membership
        if len(inner) < 2:
            raise MembershipError(f"line {n}: `server` without an address")
        servers.append(Server(inner[1], down="down" in inner[2:]))
    return Membership.of(words[1], servers)


Statement = tuple[list[str], "list[Statement] | None", int]  # words, block body, line


def _statements(text: str) -> list[Statement]:
    """nginx's syntax: `words;` or `words { statements }`, comments dropped."""
    tokens = [(m[0], text.count("\n", 0, m.start()) + 1) for m in _tokens(text)]
    stack: list[list[Statement]] = [[]]
    opened: list[tuple[list[str], int]] = []
    words: list[str] = []
    start = 0
    for token, line in tokens:
        if token == ";":
            if not words:
                raise MembershipError(f"line {line}: `;` with no directive before it")
            stack[-1].append((words, None, start))
            words = []
        elif token == "{":
            if not words:
                raise MembershipError(f"line {line}: `{{` with no directive before it")
            opened.append((words, start))
            stack.append([])
            words = []
        elif token == "}":
            if words or not opened:
                raise MembershipError(f"line {line}: unexpected `}}`")
            body = stack.pop()
            head, at = opened.pop()
            stack[-1].append((head, body, at))
        else:
            if not words:
                start = line
            words.append(token.strip("\"'") if token[0] in "\"'" else token)
    if words or opened:
        raise MembershipError("unexpected end of file (a `;` or `}` is missing)")
    return stack[0]


def _tokens(text: str) -> list[re.Match[str]]:
    # Comments are blanked, not removed, so offsets (and so line numbers) stay true.
    blanked = _COMMENT.sub(lambda m: " " * len(m[0]), text)
    return list(_TOKEN.finditer(blanked))
