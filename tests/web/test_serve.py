import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

pytest.importorskip("uvicorn")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_serve_beyond_loopback_generates_a_token_and_enforces_it():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "featvis.cli", "serve", "--host", "0.0.0.0", "--port", str(port),
                             "--device", "cpu"], stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        token = re.search(r"token=([\w-]+)", line).group(1)
        base = f"http://127.0.0.1:{port}/api/health"
        for _ in range(100):
            try:
                status = get(base)
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        assert status == 401
        assert get(f"{base}?token={token}") == 200
    finally:
        proc.terminate()
        proc.wait(timeout=10)
