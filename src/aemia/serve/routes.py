"""HTTP routes of the review app (the API is listed in :mod:`aemia.serve.app`); errors become JSON
``{"detail": ...}``: 400 bad input, 401/403 access (:mod:`aemia.serve.security`), 404 unknown case or file,
409 a stale save, 413 an upload over the limit."""

from __future__ import annotations

import mimetypes
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from aemia.active.ledger_effort import StaleVersionError
from aemia.errors import InputError
from aemia.serve.masks import MAX_UPLOAD_BYTES
from aemia.serve.security import TOKEN_COOKIE, request_problem

__all__ = ["build_app"]


def build_app(served: Any, token: str | None) -> FastAPI:
    """The FastAPI app over ``served`` (an :class:`aemia.serve.app.ServedProject`)."""
    from aemia.serve.app import STATIC

    app = FastAPI(title="aemia review", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.served = served

    def refuse(status: int, message: str) -> JSONResponse:
        return JSONResponse({"detail": message}, status_code=status)

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Any:
        problem = request_problem(token, request.method, {k.lower(): v for k, v in request.headers.items()},
                                  dict(request.cookies), dict(request.query_params))
        if problem is not None:
            return refuse(*problem)
        response = await call_next(request)
        if token is not None and request.query_params.get("token") == token:
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @app.exception_handler(StaleVersionError)
    async def stale(_: Request, exc: StaleVersionError) -> JSONResponse:
        return refuse(409, str(exc))

    @app.exception_handler(InputError)
    async def bad_input(_: Request, exc: InputError) -> JSONResponse:
        return refuse(400, str(exc))

    @app.exception_handler(LookupError)
    async def unknown_case(_: Request, exc: LookupError) -> JSONResponse:
        return refuse(404, f"no case {exc.args[0]!r} in this project")

    @app.get("/")
    def index() -> Response:
        return Response((STATIC / "index.html").read_bytes(), media_type="text/html")

    @app.get("/static/{name:path}")
    def static(name: str) -> Response:
        root = STATIC.resolve()
        f = (root / name).resolve()
        if not f.is_relative_to(root) or not f.is_file():  # traversal (../, absolute paths, symlinks out)
            return refuse(404, "no such file")
        return Response(f.read_bytes(), media_type=mimetypes.guess_type(f.name)[0] or "application/octet-stream")

    @app.get("/api/project")
    def project() -> dict[str, Any]:
        p = served.project
        return {"name": p.root.name, "task": p.config.task, "classes": p.config.classes,
                "annotator": served.annotator, "priority": None if served.priority is None else served.priority.name}

    @app.get("/api/worklist")
    def worklist() -> list[dict[str, Any]]:
        return served.worklist()

    @app.get("/api/effort")
    def effort() -> dict[str, Any]:
        from aemia.active.effort import effort_report

        return effort_report(served.project)

    @app.get("/api/cases/{case_id}/meta")
    def meta(case_id: str) -> dict[str, Any]:
        return served.meta(case_id)

    @app.get("/api/cases/{case_id}/slice")
    def slice_png(case_id: str, view: str, index: int = 0, window: str = "auto") -> Response:
        return Response(served.cache.get(case_id).render(view, index, window), media_type="image/png")

    @app.get("/api/cases/{case_id}/mask")
    def mask(case_id: str, which: str = "current") -> Response:
        if which not in ("current", "start"):
            raise InputError(None, f"which must be current or start, not {which!r}")
        data, version = served.mask(case_id, which)
        return Response(data, media_type="application/octet-stream",
                        headers={"Content-Encoding": "gzip", "X-Case-Version": str(version)})

    @app.get("/api/cases/{case_id}/heat")
    def heat(case_id: str) -> Response:
        data = served.heat(case_id)
        if data is None:
            return refuse(404, f"case {case_id!r} has no attention or uncertainty map")
        return Response(data, media_type="application/octet-stream", headers={"Content-Encoding": "gzip"})

    @app.post("/api/cases/{case_id}/save")
    async def save(case_id: str, request: Request, action: str = "saved", base_version: int = -1,
                   annotator: str = "", seconds: float = 0.0, started_at: str | None = None,
                   encoding: str = "gzip") -> Any:
        declared = int(request.headers.get("content-length") or 0)
        if declared > MAX_UPLOAD_BYTES:
            return refuse(413, f"upload of {declared} bytes is over the {MAX_UPLOAD_BYTES} byte limit")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_UPLOAD_BYTES:
                return refuse(413, f"upload is over the {MAX_UPLOAD_BYTES} byte limit")
            chunks.append(chunk)
        return await run_in_threadpool(served.save, case_id, b"".join(chunks), action=action,
                                       base_version=base_version, annotator=annotator, seconds=seconds,
                                       started_at=started_at, encoding=encoding)

    @app.post("/api/cases/{case_id}/decision")
    async def decision(case_id: str, request: Request) -> Any:
        try:
            payload = await request.json()
        except ValueError:
            raise InputError(None, "the decision must be a JSON object") from None
        if not isinstance(payload, dict):
            raise InputError(None, "the decision must be a JSON object")
        return await run_in_threadpool(served.decide, case_id, payload)

    return app
