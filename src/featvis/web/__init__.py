"""The featvis web API (needs the [web] extra: fastapi, uvicorn, python-multipart)."""
