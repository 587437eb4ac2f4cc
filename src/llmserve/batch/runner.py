"""The batch runner: feeds the lines of every active batch to the app's routes, at low priority.

A plan computed from recorded state, replayed after a crash: the runner looks at each active
batch's status in the store and does what that status asks (validate the input file, run the
pending lines, write the output files), so a restart after ``kill -9`` carries on where the
store says the batch was. A line's result is recorded the moment it finishes; lines that were
in flight when the process died are still pending and run again; the output file is built from
the recorded results, so it holds every ``custom_id`` exactly once.

One process runs batches (an exclusive lock on ``runner.lock`` in the data directory): with
``--workers N`` the others serve the Files and Batch routes from the same store and the lock
passes to another worker if the runner's process dies. Cancels made by any worker are seen at
the runner's next poll (at most ``poll_s``), or at once when made in the runner's process.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from llmserve.batch import dispatch
from llmserve.batch.lines import InvalidInput, LineError, failed_line, line_id, output_line, parse_input
from llmserve.batch.states import Status
from llmserve.batch.store import AsyncStore, IllegalTransition, JobStore

logger = logging.getLogger(__name__)
RETRY_STATUSES = (503,)  # overloaded, loading, shutting down: the line stays pending and runs later

SlotsFor = Callable[[Any], tuple[str, int]]  # a line's "model" -> (model key, lines it may run at once)


class BatchRunner:
    def __init__(self, store: AsyncStore, app, *, slots_for: SlotsFor, accepting: Callable[[], bool],
                 max_lines: int, poll_s: float = 0.5):
        self.store = store
        self.app = app
        self.slots_for = slots_for
        self.accepting = accepting
        self.max_lines = max_lines
        self.poll_s = poll_s
        self.running_lines = 0  # dispatched to the app and not yet finished (for /metrics)
        self._wake = asyncio.Event()
        self._pokes: dict[str, asyncio.Event] = {}  # per batch driver
        self._cancelled: set[str] = set()  # cancelled in this process: no new line starts, even queued ones
        self._drivers: dict[str, asyncio.Task] = {}
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._main: asyncio.Task | None = None
        self._lock_fd: int | None = None

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        self._main = asyncio.create_task(self._loop(), name="llmserve-batch-runner")

    async def aclose(self) -> None:
        """Stops at once: lines in flight are abandoned (still pending in the store, they run after a restart)."""
        tasks = [t for t in (self._main, *self._drivers.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def wake(self) -> None:
        """A batch was created: look now."""
        self._wake.set()

    def cancelled(self, batch_id: str) -> None:
        """The batch was moved to cancelling in this process: start none of its lines from now on."""
        self._cancelled.add(batch_id)
        if batch_id in self._pokes:
            self._pokes[batch_id].set()

    @property
    def is_runner(self) -> bool:
        return self._lock_fd is not None

    # -- the loop ---------------------------------------------------------------------------------
    async def _loop(self) -> None:
        while True:
            try:
                if self._lock_fd is not None or self._take_lock():
                    for batch in await self.store.call(JobStore.active_batches):
                        if batch["id"] not in self._drivers:
                            task = asyncio.create_task(self._drive(batch["id"]), name=f"batch-{batch['id']}")
                            self._drivers[batch["id"]] = task
            except Exception:
                logger.exception("batch runner poll failed")
            await self._sleep(self.poll_s if self._lock_fd is not None else 2.0)

    def _take_lock(self) -> bool:
        fd = os.open(self.store.sync.root / "runner.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._lock_fd = fd
        logger.info("this process runs batch jobs (pid %d)", os.getpid())
        return True

    async def _sleep(self, seconds: float, event: asyncio.Event | None = None) -> None:
        event = event or self._wake
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)
        event.clear()

    async def _drive(self, batch_id: str) -> None:
        """Does what the batch's recorded status asks until it reaches a final status."""
        self._pokes[batch_id] = asyncio.Event()
        try:
            while True:
                batch = await self.store.call(JobStore.get_batch, None, batch_id)
                status = Status(batch["status"])
                if status is Status.VALIDATING:
                    await self._validate(batch)
                elif status is Status.IN_PROGRESS:
                    await self._run_lines(batch)
                elif status is Status.FINALIZING:
                    await self._finish(batch, Status.COMPLETED)
                elif status is Status.CANCELLING:
                    await self._finish(batch, Status.CANCELLED)
                else:
                    return
        except IllegalTransition as exc:  # another process moved it first: look again at the next poll
            logger.info("%s", exc)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("batch %s: runner failed; retrying at the next poll", batch_id)
            await asyncio.sleep(1.0)
        finally:
            self._drivers.pop(batch_id, None)
            self._pokes.pop(batch_id, None)

    # -- validating ---------------------------------------------------------------------------------
    async def _validate(self, batch: dict[str, Any]) -> None:
        path = self.store.sync.path_of(batch["input_file_id"])
        try:
            data = await asyncio.to_thread(path.read_bytes)
            lines = parse_input(data, batch["endpoint"], self.max_lines)
        except FileNotFoundError:
            await self._fail(batch, [LineError("file_not_found", f"input file {batch['input_file_id']} was deleted")])
            return
        except InvalidInput as exc:
            await self._fail(batch, exc.errors)
            return
        rows = [(line.index, line.custom_id, json.dumps(line.body)) for line in lines]
        total = await self.store.call(JobStore.add_lines, batch["id"], rows)
        await self.store.call(JobStore.advance, batch["id"], Status.IN_PROGRESS)
        logger.info("batch %s: %d requests, in progress", batch["id"], total)

    async def _fail(self, batch: dict[str, Any], errors: list[LineError]) -> None:
        payload = json.dumps({"object": "list", "data": [e.as_dict() for e in errors]})
        await self.store.call(JobStore.advance, batch["id"], Status.FAILED, errors=payload)
        logger.info("batch %s failed validation: %s", batch["id"], errors[0].message)

    # -- in progress --------------------------------------------------------------------------------
    async def _run_lines(self, batch: dict[str, Any]) -> None:
        batch_id = batch["id"]
        inflight: dict[int, asyncio.Task] = {}
        window = 2 * self.slots_for(None)[1]  # lines started per batch: enough to fill the slots
        poke = self._pokes[batch_id]
        try:
            while True:
                batch = await self.store.call(JobStore.get_batch, None, batch_id)
                if batch["status"] != Status.IN_PROGRESS.value:
                    return  # cancelling (its lines in flight are dropped below): _drive goes on
                if time.time() >= batch["expires_at"]:
                    await self._cancel_all(inflight)
                    await self._finish(batch, Status.EXPIRED)
                    return
                if self.accepting() and len(inflight) < window and batch_id not in self._cancelled:
                    for idx, custom_id, body in await self.store.call(
                            JobStore.pending_lines, batch_id, skip=set(inflight), limit=window - len(inflight)):
                        inflight[idx] = asyncio.create_task(self._line(batch, idx, custom_id, json.loads(body)))
                if not inflight and batch["completed"] + batch["failed"] >= batch["total"]:
                    await self.store.call(JobStore.advance, batch_id, Status.FINALIZING)
                    return
                waiter = asyncio.ensure_future(poke.wait())
                await asyncio.wait([*inflight.values(), waiter], timeout=self.poll_s,
                                   return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                poke.clear()
                for idx, task in list(inflight.items()):
                    if task.done():
                        del inflight[idx]
                        if not task.cancelled() and task.exception() is not None:
                            logger.error("batch %s line %d failed", batch_id, idx, exc_info=task.exception())
        finally:
            await self._cancel_all(inflight)

    @staticmethod
    async def _cancel_all(tasks: dict[int, asyncio.Task]) -> None:
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        tasks.clear()

    async def _line(self, batch: dict[str, Any], idx: int, custom_id: str, body: dict[str, Any]) -> None:
        """Runs one line and records its result; leaves it pending when the server cannot take it now."""
        key, slots = self.slots_for(body.get("model"))
        semaphore = self._slots.setdefault(key, asyncio.Semaphore(slots))
        async with semaphore:
            if not self.accepting() or batch["id"] in self._cancelled:  # draining: pending for the next start
                return
            self.running_lines += 1
            try:
                answer = await dispatch.call(self.app, dispatch.InternalCall(batch["owner"]), batch["endpoint"], body,
                                             request_id=line_id())
            finally:
                self.running_lines -= 1
        if answer.status_code in RETRY_STATUSES:
            await asyncio.sleep(1.0)  # keeps the window from spinning while the model loads or drains
            return
        ok = 200 <= answer.status_code < 300
        line = output_line(custom_id, answer.status_code, answer.request_id, answer.body)
        await self.store.call(JobStore.record_line, batch["id"], idx, line, ok)

    # -- finishing ----------------------------------------------------------------------------------
    async def _finish(self, batch: dict[str, Any], target: Status) -> None:
        """Writes the output and error files from the recorded results, then enters ``target``.
        Idempotent: the files' ids derive from the batch's, so finishing again replaces them."""
        batch_id, owner = batch["id"], batch["owner"]
        results = await self.store.call(JobStore.results, batch_id)
        out = [r for _, _, r, ok in results if r is not None and ok]
        err = [r for _, _, r, ok in results if r is not None and not ok]
        if target is Status.EXPIRED:
            err += [failed_line(cid, "batch_expired", "This request could not be executed before the completion "
                                "window expired.") for _, cid, r, _ in results if r is None]
        stem = batch_id.removeprefix("batch_")
        fields: dict[str, Any] = {}
        for kind, rows in (("output", out), ("error", err)):
            if rows:
                data = ("\n".join(rows) + "\n").encode()
                record = await self.store.call(JobStore.add_file, owner, "batch_output",
                                               f"{batch_id}_{kind}.jsonl", data, f"file-{kind}-{stem}")
                fields[f"{kind}_file_id"] = record["id"]
        await self.store.call(JobStore.advance, batch_id, target, **fields)
        logger.info("batch %s %s: %d ok, %d failed", batch_id, target.value, len(out), len(err))
