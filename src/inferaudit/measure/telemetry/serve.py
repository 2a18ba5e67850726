"""``inferaudit agent``'s HTTP side: sample every ``interval_s`` and serve the latest round.

Routes (aiohttp, one process, no authentication — bind it to an address only the auditor's
client can reach):

- ``GET /samples``: the latest round as ``agent_wire``'s JSON (``application/json``);
- ``GET /healthz``: ``{"ok": true, "sequence": N}``.

The first round runs before the server listens, so ``/samples`` always has an answer. Rounds
start every ``interval_s`` seconds of the agent's monotonic clock; a round that takes longer
delays the next one (never two at once). ``run`` blocks until SIGINT or SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import orjson
from aiohttp import web

from inferaudit.errors import ConfigError
from inferaudit.measure.telemetry.agent_wire import render_agent
from inferaudit.measure.telemetry.sampler import Sampler


@dataclass(frozen=True)
class AgentOptions:
    host: str
    port: int
    interval_s: float


def app(sampler: Sampler) -> web.Application:
    """The routes, reading ``sampler.latest``."""

    async def samples(_request: web.Request) -> web.Response:
        latest = sampler.latest
        assert latest is not None, "the first round runs before the server listens"
        return web.Response(text=render_agent(latest), content_type="application/json")

    async def healthz(_request: web.Request) -> web.Response:
        body = orjson.dumps({"ok": True, "sequence": sampler.sequence}).decode()
        return web.Response(text=body, content_type="application/json")

    application = web.Application()
    application.router.add_get("/samples", samples)
    application.router.add_get("/healthz", healthz)
    return application


async def _sample_forever(
    sampler: Sampler, interval_s: float, session: aiohttp.ClientSession | None
) -> None:
    next_at = time.monotonic() + interval_s
    while True:
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        await sampler.round(session)
        next_at = max(next_at + interval_s, time.monotonic())


async def serve_until(
    options: AgentOptions,
    sampler: Sampler,
    stop: asyncio.Event,
    on_ready: Callable[[str], None],
) -> None:
    """Serve until ``stop`` is set; ``on_ready(base_url)`` once listening."""
    assert options.interval_s > 0, "the CLI checks the interval"
    async with contextlib.AsyncExitStack() as stack:
        session = None
        if sampler.dcgm_url is not None:
            session = await stack.enter_async_context(aiohttp.ClientSession())
        await sampler.round(session)
        runner = web.AppRunner(app(sampler), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, options.host, options.port)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {options.host}:{options.port}: {exc.strerror or exc}"
            ) from None
        port = runner.addresses[0][1]
        sampling = asyncio.create_task(_sample_forever(sampler, options.interval_s, session))
        stopping = asyncio.create_task(stop.wait())
        try:
            on_ready(f"http://{options.host}:{port}")
            await asyncio.wait({sampling, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sampling, stopping):
                task.cancel()
            await asyncio.gather(sampling, stopping, return_exceptions=True)
        if sampling.done() and not sampling.cancelled():
            sampling.result()  # a round that raised is a bug: its traceback, not stale samples


def run(options: AgentOptions, sampler: Sampler, on_ready: Callable[[str], None]) -> None:
    """Serve in this process until SIGINT or SIGTERM."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve_until(options, sampler, stop, on_ready)

    asyncio.run(main())
