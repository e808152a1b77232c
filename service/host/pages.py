"""The browser pages the service serves from ``static/``: ``GET /ui`` (upload page) and ``GET /`` (API docs).

``/ui`` is one dependency-free page (``ui.html`` + ``ui.js`` + ``ui.css``, nothing from a CDN) that
posts the chosen images to ``/classify`` and reads ``/model``. ``/`` replaces BentoML's index page
(which loads Google Tag Manager and badge images from the internet) by the same Swagger UI, from
BentoML's bundled assets, under imgcls's own title with a link to ``/ui``.
"""
from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

STATIC = Path(__file__).resolve().parent / "static"
ASSETS = {"/ui/ui.js": "ui.js", "/ui/ui.css": "ui.css"}
PAGES = {"/ui": "ui.html", "/": "docs.html", **ASSETS}
CACHE = {"Cache-Control": "no-cache"}  # small files; a new release must show at once


def _endpoint(filename: str):
    path = STATIC / filename

    async def serve(_: Request) -> Response:
        return FileResponse(path, headers=CACHE)

    serve.__name__ = "page_" + filename.replace(".", "_")
    return serve


def routes() -> list[Route]:
    """One GET route per page or asset (checked at import: a missing file is a packaging error)."""
    missing = [name for name in PAGES.values() if not (STATIC / name).is_file()]
    if missing:
        raise FileNotFoundError(f"service/host/static is missing {missing}")
    return [Route(url, _endpoint(name), methods=["GET", "HEAD"]) for url, name in PAGES.items()]
