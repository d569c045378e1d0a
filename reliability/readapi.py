"""The daemon's HTTP surface as a client reaches it, with the standard library only: where a
daemon listens, what guards its read API, and one GET under a deadline.

The reading commands (`incidents list`, `status`) ask the running daemon first: it holds
a warm connection pool, so they need not import the database layer (SQLAlchemy alone
takes longer to import than the whole command may). `status` scrapes each daemon's
`/metrics` with the same GET. A refused connection fails at once; one not made within
`connect_timeout` (a host that drops packets) fails after that, not after the read's
deadline.

The read API answers only a caller that names the same database (`DATABASE_HEADER`, a
hash of the URL without its password), so a daemon of another config on the same port is
never read by mistake; and, when a token is configured (`http.api_token_env` or
`http.api_token_file`, required when `http.listen` is not loopback), only one that sends it.
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import re
import socket
import urllib.parse
from collections.abc import Mapping

INCIDENTS_PATH = "/api/v1/incidents"
STATUS_PATH = "/api/v1/status"
DATABASE_HEADER = "X-Reliability-Database"
CONNECT_TIMEOUT = 0.5
WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


class DaemonUnreachable(Exception):
    """No usable answer: nothing listening, no connection in time, no answer in time, or
    a status other than 200. The message says which, in one line."""


def base_url(listen: str, *, host: str | None = None) -> str:
    """`http://HOST:PORT` of a daemon whose `http.listen` is `listen`. A wildcard address
    means the daemon's own host: `host` (a cluster member's) when it is another machine,
    else this one's loopback."""
    address, port = listen.rsplit(":", 1)
    address = address.strip("[]")
    if address in WILDCARDS:
        address = host if host and host != socket.gethostname() else WILDCARDS[address]
    if ":" in address:
        address = f"[{address}]"
    return f"http://{address}:{port}"


def is_loopback(listen: str) -> bool:
    """Whether `http.listen` binds only this machine's loopback (127.0.0.0/8, ::1, localhost)."""
    address = listen.rsplit(":", 1)[0].strip("[]")
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def database_key(url: str) -> str:
    """A short name for the database at `url` that does not carry its password: the
    daemon and the command compare it to know they read the same database."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is not None:
        user = parts.username or ""
        host = parts.netloc.rpartition("@")[2]
        parts = parts._replace(netloc=f"{user}@{host}")
    return hashlib.sha256(urllib.parse.urlunsplit(parts).encode()).hexdigest()[:32]


def get(
    url: str,
    *,
    timeout: float,
    connect_timeout: float = CONNECT_TIMEOUT,
    headers: Mapping[str, str] | None = None,
) -> bytes:
    """The body of a 200 answer to GET `url`; DaemonUnreachable otherwise.

    http.client rather than urllib: the connection is made under `connect_timeout`, then
    the answer is waited for up to `timeout`."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DaemonUnreachable(f"not an http(s) URL: {url}")
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = kind(parts.hostname, parts.port, timeout=min(connect_timeout, timeout))
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    try:
        try:
            connection.connect()
        except TimeoutError:
            raise DaemonUnreachable(
                f"no connection within {min(connect_timeout, timeout):g}s"
            ) from None
        assert connection.sock is not None
        connection.sock.settimeout(timeout)
        connection.request("GET", path, headers={"Accept-Encoding": "identity", **(headers or {})})
        response = connection.getresponse()
        body = response.read()
    except TimeoutError:
        raise DaemonUnreachable(f"no answer within {timeout:g}s") from None
    except (OSError, http.client.HTTPException) as exc:
        raise DaemonUnreachable(one_line(exc)) from None
    finally:
        connection.close()
    if response.status != 200:
        raise DaemonUnreachable(f"HTTP {response.status} {response.reason}")
    return body


def one_line(exc: object) -> str:
    """An error's message as one line, starting lower case."""
    text = str(exc).strip()
    # "[Errno 111] Connection refused" -> "connection refused"
    text = re.sub(r"^\[Errno -?\d+\] ", "", text.splitlines()[0] if text else "")
    return text[:1].lower() + text[1:] if text else type(exc).__name__
