"""Loopback HTTP helpers shared by the web benchmarks (load.py, web_concurrency.py): multipart POST and JSON GET."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

BOUNDARY = "featvisbench"


def post(url: str, fields: dict, timeout: float = 120) -> tuple[int, dict]:
    """POST `fields` as multipart form data; (status, JSON body), or (status, {}) for an HTTP error."""
    body = "".join(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
                   for k, v in fields.items())
    body += f"--{BOUNDARY}--\r\n"
    req = urllib.request.Request(url, body.encode(), {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, {}


def get(url: str, timeout: float = 30) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())
