import contextlib
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

pytest.importorskip("uvicorn")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(make_app):
    """A real uvicorn server in a thread for `make_app(port)`; yields its base URL (no trailing slash)."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(make_app(port), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert thread.is_alive() and time.time() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def get(url: str, headers: dict | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


@pytest.mark.slow
def test_serve_beyond_loopback_generates_a_token_and_enforces_it():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "featvis.cli", "serve", "--host", "0.0.0.0", "--port", str(port),
                             "--device", "cpu"], stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        url = re.search(r"http://\S+", line).group(0)
        token = re.search(r"token=([\w-]+)", url).group(1)
        base = f"http://127.0.0.1:{port}/api/health"
        for _ in range(100):
            try:
                status = get(base)
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        assert status == 401
        assert get(base, {"Authorization": f"Bearer {token}"}) == 200
        assert get(f"{base}?token={token}") == 401  # a token in a URL ends up in logs and history
        # the printed URL sets the cookie once and sends the browser on to the page without the token
        printed = url.replace("0.0.0.0", "127.0.0.1")
        with pytest.raises(urllib.error.HTTPError) as seen:
            urllib.request.build_opener(NoRedirect).open(printed, timeout=5)
        assert seen.value.code == 303 and seen.value.headers["Location"] == "/"
        assert f"featvis_token={token}" in seen.value.headers["Set-Cookie"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
