"""The admin web service: a JSON API under ``/api/v1/`` and server-rendered pages over the
operations API (``app.admin``) and the app's schedules (``app.schedules``).

``create_app(app, tokens=...)`` returns a Starlette ASGI application; ``taskflow admin``
serves it with uvicorn. Needs the ``admin`` extra (``pip install 'taskflow-queue[admin]'``).
See ``docs/admin.md``.
"""

from __future__ import annotations

from pathlib import Path

try:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles
except ImportError as exc:  # pragma: no cover - depends on the install
    from ..errors import ConfigError

    raise ConfigError(
        "the admin web service needs its extra: pip install 'taskflow-queue[admin]'"
    ) from exc

from ..app import App
from ..errors import ConfigError
from .api import api_routes
from .auth import Principal, TokenStore
from .http import RequestIdMiddleware, error_response
from .openapi import openapi_document
from .pages import page_routes
from .service import AdminService

__all__ = ["Principal", "TokenStore", "create_app"]

_STATIC = Path(__file__).parent / "static"


def create_app(
    app: App,
    *,
    tokens: TokenStore | str | Path,
    read_only: bool = False,
    secure_cookies: bool = False,
) -> Starlette:
    """The admin service of ``app`` as an ASGI application.

    ``tokens``: a :class:`TokenStore` or the path of a token file (``name:token`` or
    ``name:token:read-only`` per line). ``read_only`` makes every caller read-only.
    ``secure_cookies`` marks the session cookie ``Secure`` (set it when the service is
    reached over HTTPS).
    """
    store = tokens if isinstance(tokens, TokenStore) else TokenStore.from_file(tokens)
    if not len(store):
        raise ConfigError("the admin service needs at least one token")
    svc = AdminService(app, store, read_only=read_only, secure_cookies=secure_cookies)
    spec = openapi_document()

    async def openapi(request: Request) -> Response:
        return JSONResponse(spec)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def not_found(request: Request, exc: Exception) -> Response:
        return error_response(request, 404, f"no such page or endpoint: {request.url.path}")

    async def not_allowed(request: Request, exc: Exception) -> Response:
        return error_response(request, 405, f"{request.method} is not allowed here")

    async def failed(request: Request, exc: Exception) -> Response:
        status = int(getattr(exc, "status_code", 500))
        return error_response(request, status, str(getattr(exc, "detail", "error")))

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/api/v1/openapi.json", openapi, methods=["GET"]),
        *api_routes(svc),
        *page_routes(svc),
        # follow_symlink: an editable install's package tree links each file to the
        # source tree, outside the folder; the folder is the package's own, and a path that
        # leaves it ("..") is refused all the same.
        Mount("/static", StaticFiles(directory=_STATIC, follow_symlink=True), name="static"),
    ]
    web = Starlette(
        routes=routes,
        middleware=[Middleware(RequestIdMiddleware)],
        exception_handlers={404: not_found, 405: not_allowed, 400: failed, 413: failed},
    )
    web.state.admin = svc
    return web
