"""Shared by the console's tests: a test operator's password, logging in over httpx, and a
real uvicorn server for the browser tests (tests/test_web.py, tests/test_web_hotspots.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import uvicorn

WAIT = 30.0

PASSWORD = "correct horse battery staple"  # noqa: S105 - a test operator
SECRET = "x" * 40


async def logged_in(web: httpx.AsyncClient, password: str = PASSWORD) -> httpx.Response:
    page = await web.get("/login")
    csrf = page.text.split('name=csrf value="')[1].split('"')[0]
    return await web.post("/login", data={"csrf": csrf, "username": "desk-1",
                                          "password": password})


@contextlib.asynccontextmanager
async def serving(app: object, port: int) -> AsyncIterator[None]:
    config = uvicorn.Config(app, host="127.0.0.1", port=port,  # type: ignore[arg-type]
                            log_level="warning", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(WAIT):
            while not server.started:
                await asyncio.sleep(0.02)
        yield
    finally:
        server.should_exit = True
        await task
