"""uvicorn with a graceful drain on SIGTERM, for one process or ``--workers N``.

uvicorn's own shutdown closes the socket, waits ``timeout_graceful_shutdown`` seconds and then
cancels whatever is still running: clients see a cut connection and the log a traceback. Here the
first SIGTERM (or SIGINT) drains the app instead (``server/drain.py``), then lets uvicorn stop a
server with nothing left in flight; the process exits 0. A second signal stops at once. With
several workers the parent passes the signals on to each worker, which drains on its own.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from types import FrameType

import uvicorn
from uvicorn.supervisors import multiprocess

from llmserve.settings import Settings

logger = logging.getLogger(__name__)
APP_FACTORY = "llmserve.server.app:create_app_from_env"


def find_drain(app):
    """The ``Drain`` of the llmserve app inside uvicorn's middleware wrappers (None if absent)."""
    while app is not None:
        state = getattr(app, "state", None)
        drain = getattr(state, "drain", None) if state is not None else None
        if drain is not None:
            return drain
        app = getattr(app, "app", None)
    return None


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, shutdown_timeout: float):
        super().__init__(config)
        self.shutdown_timeout = shutdown_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False

    async def startup(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # uvicorn's handler records the signal to raise it again at exit (exit status 128+15); not here
        if self._draining or self.should_exit:
            logger.warning("second signal: stopping now")
            self.should_exit = self.force_exit = True
            return
        drain = find_drain(self.config.loaded_app)
        if drain is None or self._loop is None or not self.started:
            self.should_exit = True
            return
        self._draining = True
        logger.info("received %s: draining (up to %.0f s)", signal.Signals(sig).name, self.shutdown_timeout)
        self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self._drain_then_exit(drain)))

    async def _drain_then_exit(self, drain) -> None:
        try:
            await drain.run(self.shutdown_timeout)
        finally:
            self.should_exit = True


class _Worker(multiprocess.Process):
    """A uvicorn worker process whose server drains."""

    shutdown_timeout = 30.0

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = DrainingServer(self.config, self.shutdown_timeout)
        return self._server


class _Supervisor(multiprocess.Multiprocess):
    """uvicorn's supervisor with draining workers; a second signal is passed on (workers stop at once)."""

    def __init__(self, config: uvicorn.Config, sockets, shutdown_timeout: float):
        super().__init__(config, sockets)
        self.shutdown_timeout = shutdown_timeout

    def _new(self) -> _Worker:
        worker = _Worker(self.config, self.sockets)
        worker.shutdown_timeout = self.shutdown_timeout
        return worker

    def init_processes(self) -> None:
        for _ in range(self.processes_num):
            process = self._new()
            process.start()
            self.processes.append(process)

    def keep_subprocess_alive(self) -> None:
        if self.should_exit.is_set():
            return
        for idx, process in enumerate(self.processes):
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            process.kill()
            process.join()
            if self.should_exit.is_set():
                return
            logger.info("worker process [%s] died; starting another", process.pid)
            process = self._new()
            process.start()
            self.processes[idx] = process

    def join_all(self) -> None:
        self.signal_queue.clear()
        while any(p.process.is_alive() for p in self.processes):
            if self.signal_queue:  # a second signal while the workers drain
                self.signal_queue.clear()
                for p in self.processes:
                    if p.process.is_alive():
                        p.process.terminate()
            time.sleep(0.1)


def run(settings: Settings) -> None:
    """Serves the app the ``LLMSERVE_*`` environment describes (the caller set it from ``settings``)."""
    config = uvicorn.Config(APP_FACTORY, factory=True, workers=settings.workers, host=settings.host,
                            port=settings.port, log_config=None, log_level=settings.log_level,
                            timeout_graceful_shutdown=5)
    if settings.workers > 1:
        sock = config.bind_socket()
        _Supervisor(config, [sock], settings.shutdown_timeout).run()
        return
    server = DrainingServer(config, settings.shutdown_timeout)
    server.run()
    if not server.started:
        raise SystemExit(3)  # start-up failed (uvicorn's STARTUP_FAILURE); the log says why
