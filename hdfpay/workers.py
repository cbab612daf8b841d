"""`hdfpay serve --workers N`: N server processes on the same ports, sharing nothing but the
database, under one supervisor that restarts a worker that dies.

Why processes: one Python process is one core; the authorization path is CPU-bound in Python
(MAC checks, JSON, asyncio), so a machine with more cores serves more terminals with more
processes. The kernel spreads new connections over the workers (SO_REUSEPORT on every listener).
A worker that dies takes its open connections with it: a terminal whose request was in flight
there gets no answer and reverses, as after any network loss; its next connection goes to a
living worker. The per-card in-flight bound (authorizer/card_gate.py) is per worker: the wallet's
row lock in the ledger is what keeps a card from being overspent, whichever worker asks.

Metrics: each worker also serves its own /metrics on 127.0.0.1:HDFPAY_WORKER_METRICS_PORT+index,
scraped as one target per process (deploy/prometheus/prometheus.yml): Prometheus adds them up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from typing import AsyncIterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from authorizer.listener import METRICS

WORKER_INDEX_VARIABLE = "HDFPAY_WORKER_INDEX"
# A worker that dies is started again after this pause, so that a crash loop does not spin.
WORKER_RESTART_DELAY_MS = 500
# More restarts than this within WORKER_RESTART_WINDOW_S: something is wrong that a restart will
# not cure (a bad setting, the database gone); the supervisor stops everything and exits 1.
WORKER_RESTARTS_MAX = 10
WORKER_RESTART_WINDOW_S = 60
# After SIGTERM each worker drains (drain notice, then requests in flight); past this margin
# beyond its own bounds it is killed.
WORKER_STOP_MARGIN_S = 10


def worker_index() -> int | None:
    """This process's index when it is a worker of `serve --workers`, else None."""
    text = os.environ.get(WORKER_INDEX_VARIABLE)
    return int(text) if text is not None and text.isdigit() else None


@contextlib.asynccontextmanager
async def worker_metrics_listener(app: web.Application, port: int) -> AsyncIterator[None]:
    """This worker's own /metrics on loopback (the shared port would answer from any worker)."""
    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(app[METRICS].registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})
    metrics_app = web.Application()
    metrics_app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(metrics_app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        yield
    finally:
        await runner.cleanup()


def _say(event: str, **fields) -> None:
    """One JSON line on stderr for the supervisor's journal (no card data ever reaches here)."""
    print(json.dumps({"event": event, **fields}), file=sys.stderr, flush=True)


class Supervisor:
    """Starts `count` workers (`hdfpay serve` with HDFPAY_WORKER_INDEX set), restarts those that
    die, and on SIGTERM or SIGINT stops them all, each draining first."""

    def __init__(self, count: int, dsn: str, stop_after_s: float) -> None:
        self.count = count
        self._env = {**os.environ, "DATABASE_URL": dsn, "HDFPAY_WORKERS": "1"}
        self._stop_after_s = stop_after_s + WORKER_STOP_MARGIN_S
        self._stopping = asyncio.Event()
        self._restarts: list[float] = []
        self._gave_up = False
        self.processes: dict[int, asyncio.subprocess.Process] = {}

    async def _start(self, index: int) -> None:
        self.processes[index] = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "hdfpay", "serve",
            env={**self._env, WORKER_INDEX_VARIABLE: str(index)})
        _say("worker.started", worker=index, pid=self.processes[index].pid)

    async def _watch(self, index: int) -> None:
        while True:
            code = await self.processes[index].wait()
            if self._stopping.is_set():
                return
            now = time.monotonic()
            self._restarts = [t for t in self._restarts if now - t < WORKER_RESTART_WINDOW_S] + [now]
            _say("worker.died", worker=index, exit_code=code, restarts_in_window=len(self._restarts))
            if len(self._restarts) > WORKER_RESTARTS_MAX:
                _say("supervisor.giving_up", reason="workers keep dying")
                self._gave_up = True
                self._stopping.set()
                return
            await asyncio.sleep(WORKER_RESTART_DELAY_MS / 1000)
            if self._stopping.is_set():
                return
            await self._start(index)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stopping.set)
        for index in range(self.count):
            await self._start(index)
        watchers = [asyncio.create_task(self._watch(i)) for i in range(self.count)]
        await self._stopping.wait()
        await self._stop_all()
        for watcher in watchers:
            watcher.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        return 1 if self._gave_up else 0

    async def _stop_all(self) -> None:
        alive = [p for p in self.processes.values() if p.returncode is None]
        for process in alive:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(self._stop_after_s):
                await asyncio.gather(*(p.wait() for p in alive))
        except TimeoutError:
            for process in alive:
                if process.returncode is None:
                    _say("worker.killed", pid=process.pid, reason="did not stop in time")
                    process.kill()
        _say("supervisor.stopped", workers=self.count)
