"""The ``dsfs ui`` web application: HTML pages and the JSON API under ``/api/`` they use.

A Starlette app over one ``UiModel``. It only reads. Handlers are plain functions, which
Starlette runs in its thread pool (the model blocks on the store and on SQLite). Every path a
URL names is looked up in a version's index, never on a disk: a path that is not a valid dataset
path (``..``, absolute, encoded or not) is simply not found. The one file-serving route is the
package's own ``/static`` folder (Starlette's StaticFiles keeps requests inside it).
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from ..errors import Corrupt, DsfsError, InvalidInput, NotFound, StoreUnavailable
from ..progress import human_size
from .graph import GraphUnavailable, dataset_svg
from .model import UiModel

HERE = Path(__file__).parent
_STATUS = ((NotFound, 404), (InvalidInput, 400), (StoreUnavailable, 503), (Corrupt, 502))
# No inline scripts, nothing from elsewhere; Graphviz's SVG styles its shapes with attributes.
_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                                       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
            "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


def version_href(version_id: str) -> str:
    return f"/versions/{version_id}"


def file_href(version_id: str, path: str) -> str:
    return f"/versions/{version_id}/files/{urllib.parse.quote(path)}"


def _templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    env = templates.env
    env.filters["size"] = human_size
    env.filters["when"] = lambda iso: (iso or "")[:19].replace("T", " ")
    env.globals.update(version_href=version_href, file_href=file_href,
                       quote=lambda text: urllib.parse.quote(text, safe=""))
    return templates


def create_app(model: UiModel, *, allowed_hosts: list[str] | None = None) -> Starlette:
    """The app; ``allowed_hosts`` (Host header names) guards a loopback server against DNS
    rebinding, so a web page elsewhere cannot read the store through the browser."""
    templates = _templates()

    def page(request: Request, name: str, context: dict) -> Response:
        return templates.TemplateResponse(request, name, context, headers=_HEADERS)

    def api(doc) -> Response:
        return JSONResponse(doc, headers=_HEADERS)

    def arg(request: Request, name: str, default: str = "") -> str:
        return request.query_params.get(name, default)

    def number(request: Request, name: str, default: int) -> int:
        value = arg(request, name, str(default))
        try:
            return int(value)
        except ValueError:
            raise InvalidInput(f"{name} must be a number: {value!r}") from None

    # -- pages ------------------------------------------------------------------------------------

    def datasets_page(request: Request) -> Response:
        found = model.datasets(arg(request, "project"), arg(request, "tag"), arg(request, "q"))
        return page(request, "datasets.html", {"found": found})

    def dataset_page(request: Request) -> Response:
        dataset = model.dataset(request.path_params["name"])
        svg, graph_error = None, None
        try:
            svg = dataset_svg(dataset, version_href)
        except GraphUnavailable as exc:
            graph_error = str(exc)
        return page(request, "dataset.html", {"dataset": dataset, "svg": svg, "graph_error": graph_error})

    def version_page(request: Request) -> Response:
        ref = request.path_params["ref"]
        version = model.version(ref)
        listing = model.listing(version["id"], arg(request, "path"), arg(request, "after") or None)
        return page(request, "version.html", {"v": version, "listing": listing})

    def file_page(request: Request) -> Response:
        ref, path = request.path_params["ref"], request.path_params["path"]
        version = model.version(ref)
        entry = model.file(version["id"], path)
        if entry["type"] == "dir":
            listing = model.listing(version["id"], path, arg(request, "after") or None)
            return page(request, "version.html", {"v": version, "listing": listing})
        return page(request, "file.html", {"v": version, "f": entry})

    def changeset_page(request: Request) -> Response:
        ref, changeset_id = request.path_params["ref"], request.path_params["changeset"]
        lines = model.changeset_lines(ref, changeset_id, number(request, "offset", 0))
        return page(request, "changeset.html", {"c": lines, "summary": model.changeset(ref, changeset_id)})

    def diff_page(request: Request) -> Response:
        a, b = arg(request, "a"), arg(request, "b")
        result = None
        if a and b:
            result = model.diff(a, b, arg(request, "kind"), arg(request, "q"), number(request, "offset", 0))
        return page(request, "diff.html", {"d": result, "a": a, "b": b})

    # -- the JSON API -----------------------------------------------------------------------------

    def api_datasets(request: Request) -> Response:
        return api(model.datasets(arg(request, "project"), arg(request, "tag"), arg(request, "q")))

    def api_dataset(request: Request) -> Response:
        return api(model.dataset(request.path_params["name"]))

    def api_graph(request: Request) -> Response:
        dataset = model.dataset(request.path_params["name"])
        try:
            svg = dataset_svg(dataset, version_href)
        except GraphUnavailable as exc:
            return JSONResponse({"error": str(exc)}, status_code=503, headers=_HEADERS)
        return Response(svg, media_type="image/svg+xml", headers=_HEADERS)

    def api_version(request: Request) -> Response:
        return api(model.version(request.path_params["ref"]))

    def api_changeset(request: Request) -> Response:
        return api(model.changeset(request.path_params["ref"], request.path_params["changeset"]))

    def api_changeset_lines(request: Request) -> Response:
        return api(model.changeset_lines(request.path_params["ref"], request.path_params["changeset"],
                                         number(request, "offset", 0), number(request, "limit", 500)))

    def api_tree(request: Request) -> Response:
        return api(model.listing(request.path_params["ref"], arg(request, "path"),
                                 arg(request, "after") or None, number(request, "limit", 200)))

    def api_file(request: Request) -> Response:
        return api(model.file(request.path_params["ref"], arg(request, "path")))

    def api_preview(request: Request) -> Response:
        return api(model.preview(request.path_params["ref"], arg(request, "path")))

    def api_image(request: Request) -> Response:
        data, media_type = model.image(request.path_params["ref"], arg(request, "path"))
        # Served bytes are data, never a page: a sandbox keeps any script in them inert.
        return Response(data, media_type=media_type,
                        headers={**_HEADERS, "Content-Security-Policy": "sandbox; default-src 'none'",
                                 "Cache-Control": "private, max-age=3600"})

    def api_diff(request: Request) -> Response:
        return api(model.diff(arg(request, "a"), arg(request, "b"), arg(request, "kind"), arg(request, "q"),
                              number(request, "offset", 0), number(request, "limit", 500)))

    # -- errors -----------------------------------------------------------------------------------

    def error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, HTTPException):
            status, message = exc.status_code, exc.detail
        else:
            status, message = next((code for cls, code in _STATUS if isinstance(exc, cls)), 500), str(exc)
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": message}, status_code=status, headers=_HEADERS)
        return templates.TemplateResponse(request, "error.html", {"status": status, "message": message},
                                          status_code=status, headers=_HEADERS)

    routes = [
        Route("/", datasets_page),
        Route("/datasets/{name}", dataset_page),
        Route("/versions/{ref}", version_page),
        Route("/versions/{ref}/files/{path:path}", file_page),
        Route("/versions/{ref}/changesets/{changeset}", changeset_page),
        Route("/diff", diff_page),
        Route("/api/datasets", api_datasets),
        Route("/api/datasets/{name}", api_dataset),
        Route("/api/datasets/{name}/graph.svg", api_graph),
        Route("/api/versions/{ref}", api_version),
        Route("/api/versions/{ref}/changesets/{changeset}", api_changeset),
        Route("/api/versions/{ref}/changesets/{changeset}/lines", api_changeset_lines),
        Route("/api/versions/{ref}/tree", api_tree),
        Route("/api/versions/{ref}/file", api_file),
        Route("/api/versions/{ref}/preview", api_preview),
        Route("/api/versions/{ref}/image", api_image),
        Route("/api/diff", api_diff),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)] if allowed_hosts else []
    return Starlette(routes=routes, middleware=middleware,
                     exception_handlers={DsfsError: error, HTTPException: error})
