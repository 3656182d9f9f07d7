"""`patchflow serve`: a web page and an HTTP API for generation, one model in one process.

    patchflow serve                          # http://127.0.0.1:7860, the shipped model
    patchflow serve --model runs/tiny --port 8000 --max-frames 33 --max-queue 4

    curl -s localhost:7860/api/generate -H 'content-type: application/json' \
         -d '{"prompt": "a red circle moving right", "seed": 0}' -o red.mp4

Routes (docs/serve.md has the details):
    GET  /                      the page (static/index.html, app.js, style.css)
    GET  /api/health            model loaded, queue length, limits and the model's defaults
    POST /api/generate          JSON or multipart -> video/mp4, once its turn came and it is made
    POST /api/jobs              the same fields -> 202 {id, position}; the page polls:
    GET  /api/jobs/{id}         {status, position, step, total_steps, unknown_words, ...}
    GET  /api/jobs/{id}/video   video/mp4 of a finished job

A prompt with words a Shapes World model cannot place still generates; the words are told in the
job's `unknown_words` and the videos' X-Patchflow-Unknown-Words header, and the page shows them.

The model runs on one worker thread (serve_queue.JobQueue), so requests wait their turn; fields
are checked before they may queue (serve_inputs.parse_generation). FastAPI and uvicorn are the
`serve` extra and are imported only when the server starts, so `patchflow --help` stays light.
"""

# No `from __future__ import annotations` here: FastAPI reads the route functions' annotations
# (`request: Request`) as real classes, and Request is imported inside create_app.
import asyncio
import tempfile
import threading
import time
import urllib.parse
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Iterator

from patchflow.serving.inputs import ApiError, Limits, parse_generation
from patchflow.serving.queue import Job, JobQueue, QueueFull

STATIC_DIR = Path(__file__).resolve().parent / "static"
# The only files the server hands out: a request names one of these keys, never a path.
STATIC_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
                "style.css": "text/css; charset=utf-8"}
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
POLL_SECONDS = 0.05  # how often a waiting /api/generate request looks at its job
UNKNOWN_WORDS_HEADER = "X-Patchflow-Unknown-Words"  # prompt words the Shapes World model cannot place


def encode_mp4(video, fps: float) -> bytes:
    """uint8 [T, H, W, 3] -> mp4 bytes (H.264), written through a private temporary folder."""
    from patchflow.data.io import write_video

    with tempfile.TemporaryDirectory(prefix="patchflow-serve-") as tmp:
        return write_video(video, Path(tmp) / "video.mp4", fps=fps).read_bytes()


# ---------------------------------------------------------------- the app
def create_app(pipe, limits: Limits | None = None, fps: float | None = None):
    """A FastAPI app serving `pipe` (a VideoPipeline, loaded once) with one worker thread.

    limits: what one request may ask (Limits defaults if None); fps: of the written mp4
    (default: the model's `defaults["fps"]`).
    """
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from starlette.concurrency import run_in_threadpool

    limits = limits or Limits()
    fps = float(fps or pipe.defaults["fps"])
    static = {name: (STATIC_DIR / name).read_bytes() for name in STATIC_FILES}

    def run(job: Job) -> bytes:
        request = replace(job.params["request"], callback=job.on_step)  # checked when it was queued
        video = pipe.run(request)  # (T, H, W, 3)
        return encode_mp4(video, fps)

    queue = JobQueue(run, max_queue=limits.max_queue, max_results=limits.max_results)

    @asynccontextmanager
    async def lifespan(app):
        yield
        queue.close()

    app = FastAPI(title="patchflow", summary="Text-to-video generation", lifespan=lifespan)
    app.state.queue, app.state.limits, app.state.pipe = queue, limits, pipe

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        headers = {"Retry-After": "5"} if exc.status == 429 else None
        return JSONResponse(exc.to_json(), status_code=exc.status, headers=headers)

    async def submit(request: Request) -> Job:
        """Read, check and queue one request (the shared front half of /api/generate and /api/jobs)."""
        fields, form = await read_fields(request, limits.max_body_bytes)
        gen = await run_in_threadpool(parse_generation, fields, pipe, limits, form)  # decoding is CPU work
        try:
            return queue.submit({"request": gen.request}, gen.request.total_steps, gen.summary)
        except QueueFull as e:
            raise ApiError(429, "queue", str(e)) from None

    @app.get("/", include_in_schema=False)
    async def page():
        return Response(static["index.html"], media_type=STATIC_FILES["index.html"])

    @app.get("/static/{name}", include_in_schema=False)
    async def static_file(name: str):
        if name not in static:
            raise ApiError(404, "name", f"no static file {name!r}")
        return Response(static[name], media_type=STATIC_FILES[name], headers={"Cache-Control": "no-cache"})

    @app.get("/api/health")
    async def health():
        return {"status": "ok", "model_loaded": True, "queue_length": queue.pending(),
                "limits": asdict(limits), "fps": fps,
                "defaults": {k: pipe.defaults[k] for k in ("num_frames", "height", "width", "guidance_scale")}
                | {"steps": pipe.defaults["num_inference_steps"]},
                "rules": pipe.shape_rules()}

    @app.post("/api/generate", response_class=Response,
              responses={200: {"content": {"video/mp4": {}}, "description": "the generated video"}})
    async def generate(request: Request):
        job = await submit(request)
        try:
            polls = 0
            while not job.wait(0):  # ends: the worker finishes or fails every job it was given
                await asyncio.sleep(POLL_SECONDS)
                polls += 1
                if polls % 20 == 0 and await request.is_disconnected():
                    return Response(status_code=499)  # the client has gone: nobody reads this
        finally:  # nobody will ask for this job again; if the client left while it waited, drop it
            if not queue.cancel(job.id):
                queue.forget(job.id)  # (a no-op while it still runs: it is evicted later)
        if job.status != "done":
            return JSONResponse({"error": job.error, "field": "request"}, status_code=500)
        return Response(job.result, media_type="video/mp4", headers=_video_headers(job))

    @app.post("/api/jobs", status_code=202)
    async def create_job(request: Request):
        job = await submit(request)
        return {**queue.describe(job), "status_url": f"/api/jobs/{job.id}", "video_url": f"/api/jobs/{job.id}/video"}

    @app.get("/api/jobs/{job_id}")
    async def job_status(job_id: str):
        return queue.describe(_job(queue, job_id))

    @app.get("/api/jobs/{job_id}/video", response_class=Response,
             responses={200: {"content": {"video/mp4": {}}, "description": "the finished job's video"}})
    async def job_video(job_id: str):
        job = _job(queue, job_id)
        if job.status != "done":
            raise ApiError(409, "id", f"job {job_id} is {job.status}" + (f": {job.error}" if job.error else ""))
        return Response(job.result, media_type="video/mp4", headers=_video_headers(job))

    return app


def _job(queue: JobQueue, job_id: str) -> Job:
    job = queue.get(job_id)
    if job is None:
        raise ApiError(404, "id", f"no job {job_id!r} (unknown, or an old result that was evicted)")
    return job


def _video_headers(job: Job) -> dict[str, str]:
    headers = {"Content-Disposition": f'inline; filename="patchflow-{job.id[:8]}.mp4"', "X-Job-Id": job.id,
               "X-Seed": str(job.summary.get("seed", "")), "Cache-Control": "no-store"}
    words = job.summary.get("unknown_words")
    if words:  # headers are Latin-1: other letters are percent-encoded (UTF-8)
        headers[UNKNOWN_WORDS_HEADER] = ", ".join(urllib.parse.quote(w, safe="'") for w in words)
    return headers


async def read_fields(request, max_bytes: int) -> tuple[dict[str, Any], bool]:
    """The request's fields: (JSON object, False) or (form fields with file parts as bytes, True).

    The body is read in chunks and refused (413) as soon as it passes `max_bytes`, whatever
    Content-Length claims; file parts never reach a named file.
    """
    from starlette.requests import Request

    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json" and kind not in FORM_TYPES:
        raise ApiError(415, "content-type", f"content-type {kind or 'missing'!r}: send application/json or "
                                            "multipart/form-data")
    declared = request.headers.get("content-length", "")
    too_big = ApiError(413, "body", f"the request body is over the server's limit of {max_bytes} bytes "
                                    f"(--max-upload-mb)")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise too_big
        chunks.append(chunk)
    body = b"".join(chunks)
    if kind == "application/json":
        import json

        try:
            return json.loads(body), False
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(400, "body", f"the body is not valid JSON ({e})") from None

    sent = False

    async def replay() -> dict:  # hand the checked body to Starlette's form parser
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    fields: dict[str, Any] = {}
    try:
        async with Request(request.scope, replay).form(max_files=3, max_fields=32) as form:
            for key, value in form.multi_items():
                fields[key] = await value.read() if hasattr(value, "read") else value
    except ApiError:
        raise
    except Exception as e:  # Starlette raises its own errors for malformed multipart bodies
        raise ApiError(400, "body", f"the form cannot be parsed ({e})") from None
    return fields, True


# ---------------------------------------------------------------- running it
@contextmanager
def serve_in_background(app, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0) -> Iterator[str]:
    """Run `app` with uvicorn on a thread; yields its base URL (port 0 = a free port). For tests and notebooks."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="patchflow-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the server did not start on {host}:{port} within {timeout:g}s")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
