"""Drive a registered entry through the three front ends: the CLI, the web API and the report."""

from __future__ import annotations

import json
import time

from fastapi.testclient import TestClient

from featvis.cli import main
from featvis.web.app import create_app


def cli_json(capsys, *argv) -> dict:
    extra = ["--device", "cpu"] if argv[0] not in ("methods", "attacks", "presets", "metrics") else []
    code = main([*map(str, argv), "--json", *extra])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


def web_job(clf, path: str, data: dict, listing: str) -> tuple[list, dict]:
    """(the names the API lists at `listing`, the finished job of POST `path`)."""
    with TestClient(create_app(clf), base_url="http://127.0.0.1") as c:
        names = c.get(listing).json()
        job_id = c.post(path, data=data).json()["id"]
        for _ in range(1200):
            job = c.get(f"/api/jobs/{job_id}").json()
            if job["status"] not in ("queued", "running"):
                break
            time.sleep(0.05)
        if job["status"] == "done":
            for name in job["images"]:
                assert c.get(f"/api/jobs/{job_id}/images/{name}").status_code == 200
        return names, job


def report_html(capsys, run_dir, tmp_path) -> str:
    assert main(["report", str(run_dir), "-o", str(tmp_path / "page.html")]) == 0
    capsys.readouterr()
    return (tmp_path / "page.html").read_text()
