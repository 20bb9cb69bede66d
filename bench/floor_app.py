"""The floors' bare server: uvicorn + Starlette, no Corral code.

- GET /static: static JSON (F_http)
- GET /rt: one primary-key SELECT through SQLAlchemy's asyncpg pool, as Corral uses (F_rt)
- POST /upd: one single-row UPDATE (F_upd)
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

URL = os.environ.get("BENCH_DATABASE_URL", "")
engine = (
    create_async_engine(
        URL.replace("postgresql://", "postgresql+asyncpg://", 1), pool_size=10, max_overflow=10
    )
    if URL
    else None
)


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    if engine is not None:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE IF NOT EXISTS floor_rows (id int PRIMARY KEY, n bigint)"))
            await conn.execute(
                text(
                    "INSERT INTO floor_rows SELECT g, 0 FROM generate_series(1, 1000) g "
                    "ON CONFLICT DO NOTHING"
                )
            )
    yield
    if engine is not None:
        await engine.dispose()


async def static(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def round_trip(request: Request) -> JSONResponse:
    assert engine is not None
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT id, n FROM floor_rows WHERE id = :id"),
                {"id": 1 + hash(request.url.query) % 1000},
            )
        ).first()
    return JSONResponse({"id": row[0] if row else None})


async def single_update(request: Request) -> JSONResponse:
    assert engine is not None
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE floor_rows SET n = n + 1 WHERE id = :id"), {"id": 1 + hash(request.url.query) % 1000}
        )
    return JSONResponse({"ok": True})


app = Starlette(
    routes=[
        Route("/static", static),
        Route("/rt", round_trip),
        Route("/upd", single_update, methods=["POST"]),
    ],
    lifespan=lifespan,
)
