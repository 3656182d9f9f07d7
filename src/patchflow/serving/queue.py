"""The job queue of `patchflow serve`: one worker thread runs generations one at a time.

Requests never run the model themselves: they submit a `Job` and wait for it (the synchronous
API) or poll it (the page). One worker means one generation in memory at a time, and a request
that arrives while the model is busy waits its turn instead of competing for it. Both ends are
bounded: at most `max_queue` unfinished jobs (more are refused with `QueueFull`), and at most
`max_results` finished ones kept in memory (the oldest are forgotten first).

    queue = JobQueue(run=lambda job: b"...mp4 bytes...", max_queue=16, max_results=32)
    job = queue.submit({"prompt": "a red circle"}, total_steps=30)
    job.wait(); job.status, job.result        # "done", the bytes
    queue.close()
"""

from __future__ import annotations

import itertools
import threading
import time
import traceback
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable

STATUSES = ("queued", "running", "done", "error")


class QueueFull(RuntimeError):
    """More unfinished jobs than the queue allows; the client should retry later (HTTP 429)."""


@dataclass
class Job:
    """One generation: its parameters, where it stands, and its result (mp4 bytes) or error."""

    id: str
    params: dict[str, Any]               # what the worker passes on (checked already)
    summary: dict[str, Any]              # JSON-safe description for the status endpoint (no media)
    total_steps: int                     # sampler steps over all windows (for the progress bar)
    number: int                          # submission order, for positions
    status: str = "queued"
    step: int = 0                        # sampler steps finished so far
    result: bytes | None = None
    error: str | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    done_event: threading.Event = field(default_factory=threading.Event, repr=False)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job is done or failed; False if `timeout` seconds passed first."""
        return self.done_event.wait(timeout)

    def on_step(self, step: int, t: float, latents: Any) -> None:
        """The pipeline's callback_on_step_end: `step` counts from 0 over all windows."""
        self.step = min(step + 1, self.total_steps)


class JobQueue:
    """A FIFO of jobs served by one worker thread that calls `run(job) -> bytes`.

    run: does the work of one job (reads job.params, may call job.on_step) and returns the result;
        an exception marks the job "error" with its message (the worker goes on with the next job).
    max_queue: most unfinished (queued + running) jobs; `submit` raises QueueFull beyond it.
    max_results: most finished jobs remembered; the oldest finished are evicted first.
    """

    def __init__(self, run: Callable[[Job], bytes], max_queue: int = 16, max_results: int = 32):
        if max_queue < 1 or max_results < 1:
            raise ValueError(f"max_queue and max_results must be >= 1, got {max_queue} and {max_results}")
        self.run, self.max_queue, self.max_results = run, max_queue, max_results
        self._lock = threading.Condition()
        self._waiting: deque[Job] = deque()       # queued, in order
        self._jobs: OrderedDict[str, Job] = OrderedDict()  # every remembered job, oldest first
        self._running: Job | None = None
        self._counter = itertools.count()
        self._closed = False
        self._worker = threading.Thread(target=self._work, name="patchflow-serve-worker", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------ the request side
    def submit(self, params: dict[str, Any], total_steps: int, summary: dict[str, Any] | None = None) -> Job:
        """Queue a job; raises QueueFull when `max_queue` jobs are already waiting or running."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the job queue is closed")
            if self.pending() >= self.max_queue:
                raise QueueFull(f"the queue is full ({self.max_queue} jobs waiting or running); retry later")
            job = Job(id=uuid.uuid4().hex, params=params, summary=summary or {}, total_steps=max(1, total_steps),
                      number=next(self._counter))
            self._jobs[job.id] = job
            self._waiting.append(job)
            self._lock.notify()
            return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def forget(self, job_id: str) -> None:
        """Drop a finished job and its result (the synchronous API does, once it has answered)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None and job.done_event.is_set():
                del self._jobs[job_id]

    def cancel(self, job_id: str) -> bool:
        """Drop a job that has not started (its client went away); False if it runs, ended or is unknown."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.status != "queued":
                return False
            self._waiting.remove(job)
            self._finish(job, None, "cancelled before it started")
            self._jobs.pop(job_id, None)
            return True

    def pending(self) -> int:
        """Unfinished jobs: waiting plus the one running."""
        with self._lock:
            return len(self._waiting) + (self._running is not None)

    def position(self, job: Job) -> int:
        """How many unfinished jobs were submitted before this one (0 = running or next; done = 0)."""
        with self._lock:
            if job.status != "queued":
                return 0
            ahead = sum(1 for j in self._waiting if j.number < job.number)
            return ahead + (self._running is not None)

    def describe(self, job: Job) -> dict[str, Any]:
        """The job's status as a JSON-safe dict (what GET /api/jobs/{id} answers)."""
        out = {"id": job.id, "status": job.status, "position": self.position(job), "step": job.step,
               "total_steps": job.total_steps, "queue_length": self.pending(), **job.summary}
        if job.error is not None:
            out["error"] = job.error
        if job.started is not None and job.finished is not None:
            out["seconds"] = round(job.finished - job.started, 3)
        return out

    def close(self, timeout: float = 10.0) -> None:
        """Stop taking jobs; the worker finishes the running job and exits (queued jobs fail)."""
        with self._lock:
            self._closed = True
            while self._waiting:
                self._finish(self._waiting.popleft(), None, "the server is shutting down")
            self._lock.notify_all()
        self._worker.join(timeout)

    # ------------------------------------------------------------ the worker
    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._waiting and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return
                job = self._waiting.popleft()
                self._running, job.status, job.started = job, "running", time.time()
            result, error = None, None
            try:
                result = self.run(job)
            except Exception as e:  # a failed job must not stop the worker: report it on the job
                error = f"{type(e).__name__}: {e}" if not isinstance(e, ValueError) else str(e)
                if not isinstance(e, (ValueError, TypeError)):
                    traceback.print_exc()
            with self._lock:
                self._running = None
                self._finish(job, result, error)

    def _finish(self, job: Job, result: bytes | None, error: str | None) -> None:
        """Mark a job finished (the lock is held) and evict the oldest finished jobs beyond max_results."""
        job.result, job.error, job.finished = result, error, time.time()
        job.status = "error" if error is not None else "done"
        if job.status == "done":
            job.step = job.total_steps
        job.params = {}  # the decoded media are no longer needed
        job.done_event.set()
        finished = [j for j in self._jobs.values() if j.done_event.is_set()]
        for old in finished[:max(0, len(finished) - self.max_results)]:
            del self._jobs[old.id]
