"""The browser chat page: static files shipped in the package, served as they are.

The page is a plain client of the public API (``/v1/models``, ``/v1/chat/completions``); it
gets no private endpoint. The page itself needs no API key (a browser cannot send one when
navigating); the key the user types is kept in the browser and sent with each API call.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response

router = APIRouter(include_in_schema=False)

STATIC_PACKAGE = "llmserve.server"
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
# Everything the page loads comes from this server: no CDN, no inline script, nothing remote.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate, so an upgraded server serves its own page
}


def read_static(name: str) -> tuple[bytes, str] | None:
    """The packaged file ``name`` (a bare file name, never a path) and its media type."""
    suffix = name[name.rfind("."):] if "." in name else ""
    if "/" in name or "\\" in name or name.startswith(".") or suffix not in MEDIA_TYPES:
        return None
    path = resources.files(STATIC_PACKAGE).joinpath("static", name)
    if not path.is_file():
        return None
    return path.read_bytes(), MEDIA_TYPES[suffix]


def _file_response(name: str) -> Response:
    found = read_static(name)
    if found is None:
        raise HTTPException(404, f"no static file {name!r}")
    body, media_type = found
    return Response(body, media_type=media_type, headers=HEADERS)


@router.get("/")
async def chat_page() -> Response:
    return _file_response("index.html")


@router.get("/static/{name}")
async def static_file(name: str) -> Response:
    return _file_response(name)
