"""The web server's front door (ASGI middleware): Host and Origin, the access token, and the body cap.

Host must be exactly an allowed `name[:port]` (parsed strictly: `127.0.0.1:8000@evil.com` is refused), and an
Origin, when sent, the same. The token is read from the `Authorization: Bearer` header or the HttpOnly cookie, never
from a query string, where it would end up in logs and history: the URL printed at start (`/?token=T`) sets the
cookie once and redirects (303) to `/` without it; `/api/...?token=` is refused (401). The body is capped at once by
its Content-Length and while it streams (chunked), with the same 413 either way.

A refused request's body is read and thrown away first (drained), up to `drain` bytes and `DRAIN_S` seconds, so that
clients which send the whole body before reading the answer (urllib, requests) read the refusal instead of a
connection reset (issue 22). A larger body (by its Content-Length) is answered at once unread, and a chunked one is
answered once the bound is reached; either way the connection then closes, which such clients see as a reset. A
client that asks `Expect: 100-continue` (curl) is answered at once and never sends its body.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import re
from http.cookies import SimpleCookie
from urllib.parse import parse_qs

COOKIE = "featvis_token"
DRAIN_BYTES = 64 * 2**20  # a refused body up to this much past the cap is drained (issue 22)
DRAIN_S = 30.0  # ... for at most this long: a slow client is not waited for
# RFC 9110's Host: a bracketed IPv6 literal or a DNS name / IPv4 address, then an optional port; nothing else
_HOST = re.compile(r"(?:\[(?P<ip6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?))(?::(?P<port>[0-9]{1,5}))?")


class _TooLarge(Exception):
    pass


def size_text(n: int) -> str:
    """`n` bytes for people: "10 MiB", "97.7 KiB"."""
    return f"{n / 2**20:.3g} MiB" if n >= 2**20 else f"{n / 2**10:.3g} KiB"


def too_large(limit: int) -> str:
    """The one 413 message, wherever the cap is found exceeded."""
    return f"the upload is larger than the server's {size_text(limit)} limit; send a smaller image"


def split_host(value: str) -> tuple[str, int | None] | None:
    """The (name, port) of a Host header value, or None when it is not exactly `name[:port]` or `[ipv6][:port]`."""
    m = _HOST.fullmatch(value.lower())
    if m is None or (m["port"] is not None and int(m["port"]) > 65535):
        return None
    return m["ip6"] or m["name"], int(m["port"]) if m["port"] is not None else None


class Guard:
    """ASGI middleware: Host/Origin checks, the access token, and a body cap applied while the body streams.

    Args:
        token: required on every request when set (header or cookie; see the module docstring).
        max_body: the most body bytes let through to the app.
        hosts: the names this server is reached by; None accepts any well-formed Host (bound to every interface).
        port: the port a Host may name (None: any).
        upload_limit: the upload size the 413 message names (default `max_body`).
        drain: how many bytes past `max_body` a refused body is read and discarded before the answer.
    """

    def __init__(self, app, *, token: str | None, max_body: int, hosts: tuple[str, ...] | None, port: int | None,
                 upload_limit: int | None = None, drain: int = DRAIN_BYTES) -> None:
        self.app, self.token, self.max_body, self.hosts, self.port = app, token, max_body, hosts, port
        self.too_large = too_large(upload_limit if upload_limit is not None else max_body)
        self.drain_limit = max_body + drain

    def _host_ok(self, value: str) -> bool:
        parsed = split_host(value)
        if parsed is None:
            return False
        name, port = parsed
        if self.hosts is None:  # bound to every interface: the token guards it
            return True
        return name in self.hosts and (self.port is None or port in (None, self.port))

    def _origin_ok(self, origin: str) -> bool:
        scheme, sep, rest = origin.partition("://")  # an Origin is scheme://host[:port], no path, no user
        return bool(sep) and scheme in ("http", "https") and self._host_ok(rest)

    def _token_ok(self, headers: dict[bytes, bytes]) -> bool:
        given = headers.get(b"authorization", b"").decode("latin-1").removeprefix("Bearer ").strip()
        if not given:
            jar = SimpleCookie()
            jar.load(headers.get(b"cookie", b"").decode("latin-1"))
            given = jar[COOKIE].value if COOKIE in jar else ""
        return hmac.compare_digest(given.encode(), self.token.encode())

    def _foreign(self, headers: dict[bytes, bytes]) -> tuple[int, str] | None:
        """The refusal of a request naming another Host or coming from another Origin, if it is one."""
        host = headers.get(b"host", b"").decode("latin-1")
        if not self._host_ok(host):
            return 421, f"host {host!r} is not this server; open it at its own address"
        origin = headers.get(b"origin")
        if origin is not None and not self._origin_ok(origin.decode("latin-1")):
            return 403, "cross-origin requests are refused"
        return None

    def _unauthorized(self, scope, headers: dict[bytes, bytes]) -> tuple[int, str] | None:
        """The refusal of a request without the token in its header or cookie, if it is one."""
        if self.token is None:
            return None
        if "token" in parse_qs(scope.get("query_string", b"").decode("latin-1")):
            return 401, ("an access token in the URL is refused (URLs end up in logs and history); send the header "
                         "'Authorization: Bearer TOKEN' or open the URL printed at start once")
        if not self._token_ok(headers):
            return 401, "missing or wrong access token; open the URL printed at start"
        return None

    async def _welcome(self, scope, send) -> bool:
        """Answer the printed URL `/?token=T`: set the cookie and redirect to `/` (True), or leave it (False)."""
        if self.token is None or scope["path"] != "/" or scope["method"] not in ("GET", "HEAD"):
            return False
        given = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
        if given is None:
            return False
        if not hmac.compare_digest(given[0].encode(), self.token.encode()):
            await _reply(send, 401, "wrong access token in the URL; open the URL printed at start")
            return True
        cookie = SimpleCookie()
        cookie[COOKIE] = self.token
        cookie[COOKIE].update({"path": "/", "httponly": True, "samesite": "strict"})
        await send({"type": "http.response.start", "status": 303, "headers": [
            (b"location", b"/"), (b"set-cookie", cookie[COOKIE].OutputString().encode("latin-1")),
            (b"cache-control", b"no-store"), (b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})
        return True

    async def _drain(self, receive, headers: dict[bytes, bytes], seen: int = 0) -> None:
        """Read and discard the rest of a refused body, within the bounds (see the module docstring)."""
        import anyio

        if b"100-continue" in headers.get(b"expect", b"").lower():
            return  # the client waits for this answer before it sends: don't invite the body
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.drain_limit):
            return
        if length is None and b"chunked" not in headers.get(b"transfer-encoding", b"").lower():
            return  # no body
        with anyio.move_on_after(DRAIN_S):
            while seen <= self.drain_limit:
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body"):
                    return
                seen += len(message.get("body", b""))

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        refusal = self._foreign(headers)
        if refusal is None and await self._welcome(scope, send):
            return
        refusal = refusal or self._unauthorized(scope, headers)
        length = headers.get(b"content-length")
        if refusal is None and length is not None and length.isdigit() and int(length) > self.max_body:
            refusal = 413, self.too_large
        if refusal is not None:
            await self._drain(receive, headers)
            await _reply(send, *refusal)
            return
        seen = 0
        over = ended = started = False

        async def capped_receive():
            nonlocal seen, over, ended
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                ended = not message.get("more_body")
                if seen > self.max_body:
                    over = True
                    raise _TooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            if over and not started:
                return  # the app's own answer to the cut body (FastAPI's 400 "error parsing the body"): a 413 follows
            started = True
            await send(message)

        with contextlib.suppress(_TooLarge):  # raised in the app's receive(), unless the app caught it
            await self.app(scope, capped_receive, tracking_send)
        if over and not started:
            if not ended:
                await self._drain(receive, headers, seen)
            await _reply(send, 413, self.too_large)


async def _reply(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
