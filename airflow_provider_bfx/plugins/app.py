"""The FastAPI app the plugin mounts at ``/bfx``: the JSON API (``/bfx/api/v1``, documented at
``/bfx/docs`` and ``/bfx/openapi.json``) and the pages (``/bfx/ui``).

A catalog that cannot be reached or is misconfigured answers 503 with the message the task
start would log (what is wrong and what to do), never a stack trace; a page shows the same
message as a page.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import HTTPException, RequestValidationError
from fastapi.responses import JSONResponse, Response

from airflow_provider_bfx.exceptions import BfxError
from airflow_provider_bfx.plugins import api, pages

log = logging.getLogger("airflow_provider_bfx.plugins")

URL_PREFIX = "/bfx"


def _is_page(request: Request) -> bool:
    return request.url.path.startswith(f"{URL_PREFIX}/ui") or request.url.path.startswith("/ui")


def create_app() -> FastAPI:
    app = FastAPI(
        title="bfx recovery API",
        version="1",
        description=(
            "The restart-and-recovery catalog of airflow-provider-bfx, as the recovery view "
            "reads it. Every route needs an authenticated Airflow user (a JWT from "
            "`POST /auth/token` as `Authorization: Bearer`, or the UI's session cookie); "
            "reading a DAG needs read access to it, reset and recover need edit access."
        ),
    )
    app.include_router(api.router)
    app.include_router(pages.router)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if _is_page(request):
            return pages.error_page(exc.status_code, str(exc.detail))
        return JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> Response:
        if _is_page(request):
            return pages.error_page(422, f"bad request: {exc.errors()}")
        return JSONResponse({"detail": exc.errors()}, 422)

    @app.exception_handler(BfxError)
    async def catalog_error(request: Request, exc: Exception) -> Response:
        message = f"the bfx catalog cannot answer: {exc}"
        log.warning("[bfx recovery view] %s", message)
        if _is_page(request):
            return pages.error_page(503, message)
        return JSONResponse({"detail": message}, 503)

    return app
