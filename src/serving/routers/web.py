"""``GET /``: the web page (its scripts and styles are mounted at ``/static`` by the app)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse

from src.config import AppConfig
from src.package import STATIC_DIR


def build_router(_cfg: AppConfig) -> APIRouter:
    router = APIRouter()

    @router.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    return router
