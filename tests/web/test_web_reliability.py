"""Issue 22's server-side web items, each reproduced: over-cap bodies as whole-body-first clients (urllib) see them,
chunked bodies over the cap, strict Host/Origin parsing, no access token in query strings, one-line 422s. Each
failed on the code before the fix."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import pytest

pytest.importorskip("uvicorn")
from fastapi.testclient import TestClient

from featvis.web.app import create_app
from featvis.web.jobs import JobQueue

CAP = 100_000  # a small upload cap, so that bodies far over it stay quick on loopback
TOO_LARGE = "the upload is larger than the server's 97.7 KiB limit; send a smaller image"
BOUNDARY = "featvis-test-boundary"


def multipart(payload: bytes) -> bytes:
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode()
    return head + payload + f"\r\n--{BOUNDARY}--\r\n".encode()


def post(url: str, body: bytes, *, chunked: bool = False, headers: dict | None = None) -> tuple[int, str]:
    """POST `body` with urllib, which writes the whole body before it reads the answer; returns (status, detail)."""
    data = iter([body[i:i + 2**16] for i in range(0, len(body), 2**16)]) if chunked else body
    req = urllib.request.Request(url, data=data, method="POST", headers={
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}", **(headers or {}),
        **({"Transfer-Encoding": "chunked"} if chunked else {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())["detail"]


@pytest.fixture(scope="module")
def small_cap(clf):
    from test_serve import serving

    with serving(lambda port: create_app(clf, max_bytes=CAP, port=port, drain_bytes=32 * 2**20)) as base:
        yield base


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("size", [2 * 2**20, 16 * 2**20], ids=["2MiB", "16MiB"])
def test_an_upload_over_the_cap_is_a_413_that_urllib_reads(small_cap, size, chunked):
    """Before: 16 MiB → "Connection reset by peer" (answered unread, closed); chunked 2 MiB → 400 "There was an
    error parsing the body" (the cap's exception went through FastAPI's body parser)."""
    status, detail = post(small_cap + "/api/classify", multipart(b"x" * size), chunked=chunked)
    assert (status, detail) == (413, TOO_LARGE)


def test_an_upload_just_over_the_cap_names_the_same_limit(small_cap):
    """A file part over the cap inside a body the guard lets through: the same message."""
    assert post(small_cap + "/api/classify", multipart(b"x" * (CAP + 10))) == (413, TOO_LARGE)


def raw_request(base: str, head: str) -> bytes:
    """Send only the request head on a raw socket and return the answer (its head and its JSON body)."""
    host, port = base.removeprefix("http://").split(":")
    answer = b""
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(head.encode())
        while not answer.endswith(b"}"):
            chunk = s.recv(4096)
            assert chunk, f"the server closed the connection after {answer!r}"
            answer += chunk
    return answer


def test_a_body_beyond_the_drain_bound_is_refused_at_once_unread(small_cap):
    """Draining is bounded: a 1 GB Content-Length is answered before any of its body is sent."""
    answer = raw_request(small_cap, "POST /api/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000000\r\n"
                                    f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413 ") and TOO_LARGE.encode() in answer


def test_expect_100_continue_is_answered_without_inviting_the_body(small_cap):
    """A client that waits for 100 Continue (curl) gets the 413 instead, and never sends the body."""
    answer = raw_request(small_cap, "POST /api/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2000000\r\n"
                                    f"Expect: 100-continue\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}"
                                    "\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413 ") and TOO_LARGE.encode() in answer


def test_a_refused_token_is_readable_by_urllib_too(clf):
    """Before: a 16 MiB POST without the token → connection reset instead of the 401."""
    from test_serve import serving

    with serving(lambda port: create_app(clf, token="s3cret", port=port)) as base:
        status, detail = post(base + "/api/classify", multipart(b"x" * 16 * 2**20))
    assert status == 401 and detail.startswith("missing or wrong access token")


@pytest.mark.parametrize("host", ["127.0.0.1:8000@evil.com", "127.0.0.1:8000:80", "127.0.0.1:8000 x",
                                  "127.0.0.1:+8000", "127.0.0.1:80000", "[::1]evil", "::1", "127.0.0.1.evil.com",
                                  "evil.com#127.0.0.1", "127.0.0.1/x", ""])
def test_host_must_be_exactly_an_allowed_host_and_port(clf, host):
    """Before: `127.0.0.1:8000@evil.com` was accepted (the port part was not parsed strictly)."""
    with TestClient(create_app(clf, port=8000), base_url="http://127.0.0.1:8000") as c:
        r = c.get("/api/health", headers={"Host": host})
        assert r.status_code == 421 and r.json()["detail"].startswith("host ")
        assert c.get("/api/health", headers={"Origin": f"http://{host}"}).status_code == 403


def test_allowed_hosts_and_origins_still_pass(clf):
    with TestClient(create_app(clf, port=8000), base_url="http://127.0.0.1:8000") as c:
        for host in ("127.0.0.1:8000", "localhost:8000", "LOCALHOST", "[::1]:8000", "127.0.0.1"):
            assert c.get("/api/health", headers={"Host": host}).status_code == 200, host
        for origin in ("http://127.0.0.1:8000", "http://localhost:8000", "http://[::1]:8000"):
            assert c.get("/api/health", headers={"Origin": origin}).status_code == 200, origin
        for origin in ("http://127.0.0.1:8000/", "http://127.0.0.1:8000@evil.com", "ftp://127.0.0.1:8000"):
            assert c.get("/api/health", headers={"Origin": origin}).status_code == 403, origin


def test_the_token_is_refused_in_query_strings_and_set_once_as_a_cookie(clf):
    """Before: /api/health?token=T answered 200 (the token ends up in logs and browser history)."""
    with TestClient(create_app(clf, token="s3cret"), base_url="http://127.0.0.1") as c:
        r = c.get("/api/health", params={"token": "s3cret"})
        assert r.status_code == 401 and r.json()["detail"] == (
            "an access token in the URL is refused (URLs end up in logs and history); send the header "
            "'Authorization: Bearer TOKEN' or open the URL printed at start once")
        assert c.get("/", params={"token": "wrong"}, follow_redirects=False).status_code == 401
        assert "featvis_token" not in c.cookies
        r = c.get("/", params={"token": "s3cret"}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/"
        cookie = r.headers["set-cookie"].lower()
        assert "featvis_token=s3cret" in cookie and "httponly" in cookie and "samesite=strict" in cookie
        assert c.get("/").status_code == 200  # the cookie, now in the client's jar
        assert c.get("/api/health").status_code == 200
        c.cookies.clear()
        assert c.get("/api/health", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/api/health").status_code == 401


def test_form_validation_errors_are_one_line(clf):
    """Before: FastAPI's list of error objects (the page showed `[object Object]`)."""
    with TestClient(create_app(clf), base_url="http://127.0.0.1") as c:
        r = c.post("/api/visualize", data={"kind": "class", "target": "pizza", "steps": "1.5"})
        assert r.status_code == 422
        assert r.json()["detail"] == "field 'steps': input should be a valid integer, unable to parse string as " \
                                     "an integer; correct it and retry"


def test_info_tells_the_page_the_upload_limit(clf):
    with TestClient(create_app(clf, max_bytes=CAP), base_url="http://127.0.0.1") as c:
        info = c.get("/api/info").json()
    assert info["max_upload_bytes"] == CAP and info["max_upload"] == "97.7 KiB" and info["model"] == clf.id


def test_a_chunked_body_is_drained_only_up_to_the_bound():
    """The drain stops at `max_body + drain` bytes: an endless chunked body is answered 413, not read forever."""
    from test_hardening import _asgi

    from featvis.web.guard import Guard

    async def app(scope, receive, send):  # an endpoint that reads the whole body, as the form parser does
        while (await receive()).get("more_body"):
            pass

    guard = Guard(app, token=None, max_body=1000, hosts=("127.0.0.1",), port=None, drain=2000)
    chunked = [(b"transfer-encoding", b"chunked")]
    assert _asgi(guard, chunked, [b"x" * 400] * 100) == (413, 8)  # cut at 1200 bytes, drained to 3200
    assert _asgi(guard, chunked, [b"x" * 400] * 5) == (413, 5)  # drained to its end


def test_unknown_routes_and_methods_say_where_the_routes_are(clf):
    """Before: Starlette's bare "Not Found" and "Method Not Allowed"."""
    with TestClient(create_app(clf, queue=JobQueue(capacity=1)), base_url="http://127.0.0.1") as c:
        r = c.get("/api/nothing")
        assert r.status_code == 404 and r.json()["detail"] == (
            "no such page or API route '/api/nothing'; the API's routes are listed at /openapi.json")
        r = c.put("/api/classify")
        assert r.status_code == 405 and r.json()["detail"] == (
            "PUT is not allowed on '/api/classify'; the API's routes are listed at /openapi.json")
        assert c.get("/api/jobs/nope").json()["detail"] == "no such job (finished jobs expire)"  # its own words kept
        first = c.post("/api/visualize", data={"kind": "class", "target": 1, "steps": 2000, "size": 64})
        full = c.post("/api/saliency", data={"sample": "coffee"})
        assert full.status_code == 429 and full.headers["Retry-After"] == "5"  # an HTTPException's headers kept
        c.delete(f"/api/jobs/{first.json()['id']}")
