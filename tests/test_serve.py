"""`patchflow serve` API on a tiny random model: every task, progress, bad fields, limits, concurrency."""

import base64
import io
import threading
import time

import numpy as np
import pytest
from tiny_models import saved_tiny_pipeline

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'patchflow[serve]'")
pytest.importorskip("multipart", reason="python-multipart (serve extra) is not installed")
httpx = pytest.importorskip("httpx", reason="httpx (for the test client) is not installed")
from fastapi.testclient import TestClient  # noqa: E402

from patchflow.data.io import read_video, write_video  # noqa: E402
from patchflow.cli.serve import add_serve_arguments  # noqa: E402
from patchflow.serving.server import create_app, serve_in_background  # noqa: E402
from patchflow.serving.inputs import Limits  # noqa: E402
from patchflow.serving.queue import JobQueue, QueueFull  # noqa: E402

T, H, W = 9, 16, 16  # the tiny model's trained length and size (3 latent frames of 4x4)
LIMITS = dict(max_frames=17, max_size=32, max_steps=4)
BASE = {"prompt": "a red circle moving right", "num_frames": 5, "steps": 2, "seed": 3}


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    """A tiny random pipeline, saved and loaded back the way `patchflow serve --model DIR` loads it."""
    return saved_tiny_pipeline(tmp_path_factory.mktemp("model"), T, H, W)


@pytest.fixture(scope="module")
def client(pipe):
    return TestClient(create_app(pipe, Limits(**LIMITS)))


class Watched:
    """The pipeline, counting how many generations (`run` calls: what the worker does) run at once; with a
    gate, each waits for it to open."""

    def __init__(self, pipe, gate: threading.Event | None = None):
        self._pipe, self.gate, self.lock = pipe, gate, threading.Lock()
        self.active = self.most_active = self.calls = 0

    def __getattr__(self, name):
        return getattr(self._pipe, name)

    def run(self, *args, **kwargs):
        with self.lock:
            self.active += 1
            self.calls += 1
            self.most_active = max(self.most_active, self.active)
        try:
            if self.gate is not None:
                assert self.gate.wait(60), "the test never opened the gate"
            return self._pipe.run(*args, **kwargs)
        finally:
            with self.lock:
                self.active -= 1


def _clip(n, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (n, H, W, 3), dtype=np.uint8)


def _mp4(video, tmp_path, name="clip.mp4") -> bytes:
    return write_video(video, tmp_path / name, fps=8).read_bytes()


def _png(image) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _decode(data: bytes, tmp_path, name="out.mp4") -> np.ndarray:
    path = tmp_path / name
    path.write_bytes(data)
    return read_video(path)[0]


def _lossy(video, tmp_path) -> np.ndarray:
    """What a video looks like after the server's mp4 encoding: int [T, H, W, 3]."""
    return _decode(_mp4(video, tmp_path, "ref.mp4"), tmp_path, "ref-out.mp4").astype(int)


# ---------------------------------------------------------------- the page and health
def test_page_static_and_health(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="prompt"' in page.text and "/static/app.js" in page.text
    assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/static/serve.py").status_code == 404  # only the named page files, never a path
    assert client.get("/static/..%2Fserve.py").status_code == 404
    health = client.get("/api/health").json()
    assert health["model_loaded"] is True and health["queue_length"] == 0
    assert health["limits"]["max_frames"] == 17 and health["defaults"]["num_frames"] == T
    assert health["rules"] == {"frames_first": 1, "frames_step": 4, "frames_rule": "1 + 4k (1, 5, 9, 13, 17, ...)",
                               "size_multiple": [8, 8]}


# ---------------------------------------------------------------- happy paths
def test_generate_json_is_the_pipelines_video(client, pipe, tmp_path):
    r = client.post("/api/generate", json=BASE)
    assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"
    assert r.headers["x-seed"] == "3"
    video = _decode(r.content, tmp_path)
    assert video.shape == (5, H, W, 3)
    # the pipeline's own video through the same lossy H.264 round trip (random 16x16 colour is far from lossless)
    expected = pipe(BASE["prompt"], num_frames=5, num_inference_steps=2, seed=3, progress=False)
    assert np.abs(video.astype(int) - _lossy(expected, tmp_path)).mean() < 1
    other = pipe(BASE["prompt"], num_frames=5, num_inference_steps=2, seed=4, progress=False)
    assert np.abs(video.astype(int) - _lossy(other, tmp_path)).mean() > 5


def test_words_outside_the_world_are_told(client):
    r = client.post("/api/generate", json={**BASE, "prompt": "a dragon flying over a city", "num_frames": 1})
    assert r.status_code == 200 and r.headers["x-patchflow-unknown-words"] == "dragon, flying, city"
    assert "x-patchflow-unknown-words" not in client.post("/api/generate", json={**BASE, "num_frames": 1}).headers
    job = client.post("/api/jobs", json={**BASE, "prompt": "un dragón rouge", "num_frames": 1}).json()
    assert job["unknown_words"] == ["un", "dragón", "rouge"]  # known at once, before the job runs
    deadline = time.monotonic() + 60
    while job["status"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.05)
        job = client.get(f"/api/jobs/{job['id']}").json()
    assert job["status"] == "done" and job["unknown_words"] == ["un", "dragón", "rouge"]
    assert client.get(f"/api/jobs/{job['id']}/video").headers["x-patchflow-unknown-words"] == "un, drag%C3%B3n, rouge"
    assert client.post("/api/jobs", json={**BASE, "num_frames": 1}).json()["unknown_words"] == []
    assert 'id="notice"' in client.get("/").text and "unknown_words" in client.get("/static/app.js").text


def test_every_task(client, pipe, tmp_path):
    clip5, still = _mp4(_clip(5), tmp_path, "c5.mp4"), _mp4(_clip(1, 1), tmp_path, "c1.mp4")
    end4 = _mp4(_clip(4, 2), tmp_path, "e4.mp4")
    cases = [  # (fields, form files or None, frames out)
        ({**BASE, "num_frames": "5", "seed": ""}, {"image": ("start.png", _png(_clip(1)[0]), "image/png")}, 5),
        ({**BASE, "num_frames": 9, "video": _b64(clip5), "extend": "forward"}, None, 9),
        ({**BASE, "num_frames": 9, "video": _b64(end4), "extend": "backward"}, None, 9),
        ({**BASE, "num_frames": 9, "video": _b64(still), "end_video": "data:video/mp4;base64," + _b64(end4)}, None, 9),
        ({**BASE, "num_frames": 9, "loop": True}, None, 9),
        ({**BASE, "num_frames": 1}, None, 1),
    ]
    for fields, files, frames in cases:
        r = client.post("/api/generate", **({"data": fields, "files": files} if files else {"json": fields}))
        assert r.status_code == 200, (fields.keys(), r.text)
        assert _decode(r.content, tmp_path).shape == (frames, H, W, 3)

    # an edit with strength 0 keeps the clip (its VAE round trip): the upload really reached the model
    r = client.post("/api/generate", json={**BASE, "video": _b64(clip5), "strength": 0.0})
    sent = _decode(clip5, tmp_path, "sent.mp4")  # what the server decoded from our upload
    expected = pipe("x", video=sent, strength=0.0, num_frames=5, seed=0, progress=False)
    assert np.abs(_decode(r.content, tmp_path).astype(int) - _lossy(expected, tmp_path)).mean() < 1


def test_job_progress_and_video(client, tmp_path):
    r = client.post("/api/jobs", json={**BASE, "num_frames": 17})
    assert r.status_code == 202
    job = r.json()
    assert set(job) >= {"id", "position", "status", "step", "total_steps"} and job["position"] == 0
    assert job["total_steps"] == 3 * 2  # 17 frames = 3 windows of 9 (each half overlapping) x 2 steps
    deadline = time.monotonic() + 60
    while job["status"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.05)
        job = client.get(f"/api/jobs/{job['id']}").json()
    assert job["status"] == "done" and job["step"] == job["total_steps"] == 6
    video = client.get(f"/api/jobs/{job['id']}/video")
    assert video.headers["content-type"] == "video/mp4"
    assert _decode(video.content, tmp_path).shape == (17, H, W, 3)
    assert client.get("/api/jobs/0123456789abcdef").status_code == 404
    assert client.get("/api/jobs/0123456789abcdef/video").json()["field"] == "id"


# ---------------------------------------------------------------- bad input
INVALID = [  # (fields over BASE (None removes one), status, the field named)
    ({"prompt": None}, 422, "prompt"),
    ({"prompt": "  "}, 422, "prompt"),
    ({"prompt": 7}, 422, "prompt"),
    ({"negative_prompt": ["x"]}, 422, "negative_prompt"),
    ({"num_frames": 4}, 422, "num_frames"),
    ({"num_frames": 0}, 422, "num_frames"),
    ({"num_frames": "5"}, 422, "num_frames"),
    ({"num_frames": True}, 422, "num_frames"),
    ({"height": 20}, 422, "height"),
    ({"width": -8}, 422, "width"),
    ({"steps": 0}, 422, "steps"),
    ({"steps": 1.5}, 422, "steps"),
    ({"guidance_scale": -1}, 422, "guidance_scale"),
    ({"guidance_scale": "high"}, 422, "guidance_scale"),
    ({"seed": -1}, 422, "seed"),
    ({"seed": 2**40}, 422, "seed"),
    ({"seed": "abc"}, 422, "seed"),
    ({"image": "not base64 !!"}, 422, "image"),
    ({"image": _b64(b"hello, not an image")}, 422, "image"),
    ({"image": "PNG", "video": "CLIP5", "extend": "forward"}, 422, "image"),
    ({"video": _b64(b"hello, not a video"), "extend": "forward"}, 422, "video"),
    ({"video": "CLIP5"}, 422, "video"),                                       # which task?
    ({"video": "CLIP5", "extend": "forward", "strength": 0.5}, 422, "video"),  # two tasks
    ({"video": "CLIP9", "extend": "forward", "num_frames": 5}, 422, "video"),  # clip as long as the result
    ({"extend": "sideways", "video": "CLIP5"}, 422, "extend"),
    ({"extend": "forward"}, 422, "extend"),                                    # nothing to extend
    ({"strength": 1.5, "video": "CLIP5"}, 422, "strength"),
    ({"strength": 0.5}, 422, "strength"),
    ({"end_video": "CLIP5"}, 422, "end_video"),
    ({"loop": "yes"}, 422, "loop"),
    ({"loop": True, "video": "CLIP5", "strength": 0.5}, 422, "loop"),
    ({"frames": 5}, 422, "frames"),                                            # unknown field
]


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("media")
    return {"PNG": _b64(_png(_clip(1)[0])), "CLIP5": _b64(_mp4(_clip(5), tmp, "5.mp4")),
            "CLIP9": _b64(_mp4(_clip(9), tmp, "9.mp4"))}


@pytest.mark.parametrize("change, status, field", INVALID, ids=[f"{f}-{i}" for i, (_, _, f) in enumerate(INVALID)])
def test_invalid_field(client, media, change, status, field):
    fields = {**BASE, **{k: media.get(v, v) if isinstance(v, str) else v for k, v in change.items()}}
    r = client.post("/api/generate", json={k: v for k, v in fields.items() if v is not None})
    assert r.status_code == status, r.text
    assert r.json()["field"] == field and r.json()["error"]


def test_invalid_bodies(client):
    r = client.post("/api/generate", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["field"] == "body"
    assert client.post("/api/generate", json=["a red circle"]).status_code == 400
    r = client.post("/api/generate", content=b"a red circle", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and r.json()["field"] == "content-type"
    r = client.post("/api/jobs", data={**BASE, "num_frames": "five"})
    assert r.status_code == 422 and r.json()["field"] == "num_frames"
    r = client.post("/api/jobs", data={**BASE, "loop": "maybe"})
    assert r.status_code == 422 and r.json()["field"] == "loop"


# ---------------------------------------------------------------- limits
@pytest.mark.parametrize("change, field", [
    ({"num_frames": 21}, "num_frames"), ({"height": 40}, "height"), ({"width": 64}, "width"),
    ({"steps": 5}, "steps"), ({"prompt": "a red circle " * 200}, "prompt"),
    ({"video": "CLIP25", "strength": 0.5}, "video"),  # more frames than max_frames, refused while decoding
])
def test_over_limits_413(client, media, tmp_path, change, field):
    if "video" in change:
        media = {"CLIP25": _b64(_mp4(_clip(25), tmp_path))}
    fields = {**BASE, **{k: media.get(v, v) if isinstance(v, str) else v for k, v in change.items()}}
    r = client.post("/api/generate", json=fields)
    assert r.status_code == 413 and r.json()["field"] == field, r.text


def test_upload_bytes_limit(pipe, tmp_path):
    client = TestClient(create_app(pipe, Limits(**LIMITS, max_upload_mb=0.01)))  # 10 KiB bodies
    big = _b64(np.random.RandomState(0).bytes(20_000))
    r = client.post("/api/generate", json={**BASE, "image": big})
    assert r.status_code == 413 and r.json()["field"] == "body"
    r = client.post("/api/jobs", data=BASE, files={"image": ("a.png", big.encode(), "image/png")})
    assert r.status_code == 413 and r.json()["field"] == "body"
    chunks = (b'{"prompt": "a", "image": "' if i == 0 else b"A" * 4096 for i in range(5))  # no Content-Length
    r = client.post("/api/generate", content=chunks, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["field"] == "body"
    assert client.post("/api/generate", json=BASE).status_code == 200  # small requests still pass


def test_queue_full_429_and_positions(pipe):
    gate = threading.Event()
    watched = Watched(pipe, gate)
    client = TestClient(create_app(watched, Limits(**LIMITS, max_queue=2)))
    try:
        first = client.post("/api/jobs", json=BASE).json()
        deadline = time.monotonic() + 30
        while watched.calls == 0 and time.monotonic() < deadline:  # the worker has taken the first job
            time.sleep(0.01)
        second = client.post("/api/jobs", json=BASE).json()
        assert client.get(f"/api/jobs/{first['id']}").json()["status"] == "running"
        assert second["status"] == "queued" and second["position"] == 1
        assert client.get(f"/api/jobs/{second['id']}/video").status_code == 409
        full = client.post("/api/jobs", json=BASE)
        assert full.status_code == 429 and full.json()["field"] == "queue" and full.headers["retry-after"]
        assert client.post("/api/generate", json=BASE).status_code == 429
        assert client.get("/api/health").json()["queue_length"] == 2
    finally:
        gate.set()
    deadline = time.monotonic() + 60
    while client.get("/api/health").json()["queue_length"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.get(f"/api/jobs/{second['id']}").json()["status"] == "done"
    assert client.post("/api/jobs", json=BASE).status_code == 202  # room again


def test_eight_concurrent_requests_on_a_live_server(pipe, tmp_path):
    watched = Watched(pipe)
    answers: dict[int, httpx.Response] = {}

    def ask(url: str, i: int) -> None:
        answers[i] = httpx.post(f"{url}/api/generate", json={**BASE, "seed": i}, timeout=120)

    with serve_in_background(create_app(watched, Limits(**LIMITS))) as url:
        assert url.startswith("http://127.0.0.1:")
        threads = [threading.Thread(target=ask, args=(url, i)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert httpx.get(f"{url}/api/health").json()["queue_length"] == 0
    assert sorted(answers) == list(range(8))
    videos = []
    for i, r in answers.items():
        assert r.status_code == 200 and r.headers["x-seed"] == str(i)
        videos.append(_decode(r.content, tmp_path, f"{i}.mp4"))
        assert videos[-1].shape == (5, H, W, 3)
    assert watched.calls == 8 and watched.most_active == 1  # one at a time, each in its turn
    assert len({v.tobytes() for v in videos}) == 8  # eight seeds, eight different videos


def test_a_client_that_leaves_frees_its_place(pipe):
    gate = threading.Event()
    with serve_in_background(create_app(Watched(pipe, gate), Limits(**LIMITS))) as url:
        try:
            assert httpx.post(f"{url}/api/jobs", json=BASE).status_code == 202  # runs, held at the gate
            with pytest.raises(httpx.ReadTimeout):  # waits behind it, then gives up
                httpx.post(f"{url}/api/generate", json=BASE, timeout=httpx.Timeout(5, read=0.5))
            deadline = time.monotonic() + 10
            while httpx.get(f"{url}/api/health").json()["queue_length"] > 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert httpx.get(f"{url}/api/health").json()["queue_length"] == 1  # its job was cancelled
        finally:
            gate.set()


def test_job_queue_order_errors_and_eviction():
    gate, seen = threading.Event(), []

    def run(job):
        assert gate.wait(30)
        seen.append(job.params["n"])
        if job.params["n"] == 1:
            raise RuntimeError("boom")
        return b"video %d" % job.params["n"]

    queue = JobQueue(run, max_queue=4, max_results=2)
    try:
        jobs = [queue.submit({"n": n}, total_steps=3) for n in range(4)]
        with pytest.raises(QueueFull):
            queue.submit({"n": 4}, total_steps=3)
        deadline = time.monotonic() + 10
        while jobs[0].status != "running" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [queue.position(j) for j in jobs] == [0, 1, 2, 3] and queue.pending() == 4
        assert queue.cancel(jobs[2].id) and not queue.cancel(jobs[0].id)  # only a job that has not started
        assert queue.position(jobs[3]) == 2 and queue.get(jobs[2].id) is None
        jobs.append(queue.submit({"n": 5}, total_steps=3))  # room again
        gate.set()
        assert all(j.wait(30) for j in jobs)
    finally:
        gate.set()
        queue.close()
    assert seen == [0, 1, 3, 5]  # first in, first out, one at a time
    assert [j.status for j in jobs] == ["done", "error", "error", "done", "done"]  # a failure does not stop the worker
    assert jobs[1].error == "RuntimeError: boom" and jobs[2].error.startswith("cancelled")
    assert jobs[4].result == b"video 5" and jobs[4].step == 3
    assert queue.get(jobs[0].id) is None and queue.get(jobs[1].id) is None  # the oldest were evicted
    assert queue.describe(jobs[4])["status"] == "done" and queue.pending() == 0


def test_failed_generation_answers_500(pipe):
    class Broken(Watched):
        def run(self, *args, **kwargs):
            raise RuntimeError("out of memory (pretend)")

    client = TestClient(create_app(Broken(pipe), Limits(**LIMITS)))
    r = client.post("/api/generate", json=BASE)
    assert r.status_code == 500 and "out of memory" in r.json()["error"]


def test_cli_arguments():
    import argparse

    args = add_serve_arguments(argparse.ArgumentParser()).parse_args(["--max-frames", "33", "--max-queue", "4"])
    assert (args.host, args.port, args.max_frames, args.max_queue, args.model) == ("127.0.0.1", 7860, 33, 4, None)
    with pytest.raises(ValueError, match="max_frames"):
        Limits(max_frames=0)
