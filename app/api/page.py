"""GET /: the browser page; GET /static/<name>: its files (plain HTML/CSS/JS in app/static, no build step).

Only regular files that lie directly in app/static are served, looked up by name in a listing of that
folder, so no request can reach a file outside it. Files are read at request time: editing the page
needs no restart. None of these routes is part of the OpenAPI schema.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"

# Explicit types (the platform's mimetypes table varies, e.g. .js as text/plain on some systems).
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
}

# The page loads nothing from elsewhere and runs no inline script; previews are blob: URLs.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter()


def static_file(name: str) -> FileResponse:
    """The file `name` of app/static, or 404 if there is no such regular file directly in it."""
    path = STATIC_DIR / name
    try:
        listed = {p.name for p in STATIC_DIR.iterdir() if p.is_file()}
    except OSError:
        listed = set()
    media_type = MEDIA_TYPES.get(path.suffix.lower())
    if name not in listed or name.startswith(".") or media_type is None:
        raise HTTPException(status_code=404, detail=f"no static file {name[:80]!r}")
    return FileResponse(path, media_type=media_type, headers=SECURITY_HEADERS)


@router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
async def index() -> FileResponse:
    return static_file("index.html")


@router.api_route("/static/{name}", methods=["GET", "HEAD"], include_in_schema=False)
async def static(name: str) -> FileResponse:
    return static_file(name)
