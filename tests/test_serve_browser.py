"""The `patchflow serve` page in a real headless Chromium: type a prompt, press Generate, and a
playable <video> of the result appears (and a screenshot is saved).

Needs chromium, chromedriver and selenium (Debian: `apt-get install -y chromium chromium-driver`,
then `pip install selenium`); without them every test here is skipped, saying what is missing.
Set PATCHFLOW_SCREENSHOT=path.png to keep a copy of the screenshot (docs/serve.png is made so).
"""

import os
import shutil

import pytest
from tiny_models import saved_tiny_pipeline

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'patchflow[serve]'")
pytest.importorskip("multipart", reason="python-multipart (serve extra) is not installed")
httpx = pytest.importorskip("httpx", reason="httpx is not installed")
pytest.importorskip("selenium", reason="selenium is not installed: pip install selenium")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from patchflow.data.io import read_video  # noqa: E402
from patchflow.serving.server import create_app, serve_in_background  # noqa: E402
from patchflow.serving.inputs import Limits  # noqa: E402


def _which(*names: str) -> str | None:
    return next((path for name in names if (path := shutil.which(name))), None)


CHROMIUM = _which("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMEDRIVER = _which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason=f"no {'chromium' if CHROMIUM is None else 'chromedriver'} on PATH "
           "(Debian: apt-get install -y chromium chromium-driver)")
# Headless, no sandbox (CI runs as root), and nothing that reaches beyond 127.0.0.1.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--autoplay-policy=no-user-gesture-required", "--window-size=1100,1120")
T, H, W = 9, 32, 32  # the tiny model's defaults here: what the page fills in from /api/health


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    app = create_app(saved_tiny_pipeline(tmp_path_factory.mktemp("model"), T, H, W), Limits(max_frames=17, max_size=64, max_steps=4))
    with serve_in_background(app, host="127.0.0.1", port=0) as url:
        yield url


@pytest.fixture
def browser(tmp_path):
    options = Options()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")  # a fresh profile every time
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


PLAYABLE = """const v = document.getElementById('player');
return !v.hidden && v.readyState >= 2 && v.duration > 0 && !v.error;"""


def test_page_generates_a_playable_video(server, browser, tmp_path):
    browser.get(server + "/")
    wait = WebDriverWait(browser, 60, poll_frequency=0.2)
    wait.until(lambda d: d.find_element(By.ID, "num_frames").get_attribute("value") == str(T))  # from /api/health
    browser.find_element(By.ID, "prompt").send_keys("a red circle moving right on a black background")
    browser.find_element(By.ID, "seed").send_keys("7")
    browser.find_element(By.ID, "generate").click()

    wait.until(lambda d: d.execute_script(PLAYABLE))
    info = browser.execute_script("""const v = document.getElementById('player');
        return {src: v.currentSrc, w: v.videoWidth, h: v.videoHeight, duration: v.duration,
                download: document.getElementById('download').href,
                gallery: document.querySelectorAll('#gallery video').length,
                status: document.getElementById('status').textContent};""")
    assert (info["w"], info["h"]) == (W, H) and abs(info["duration"] - T / 8) < 0.2  # 9 frames at 8 fps
    assert info["download"] == info["src"] and info["gallery"] == 1 and "red circle" in info["status"]
    video = httpx.get(info["src"], timeout=30)
    assert video.headers["content-type"] == "video/mp4"
    (tmp_path / "got.mp4").write_bytes(video.content)
    assert read_video(tmp_path / "got.mp4")[0].shape == (T, H, W, 3)

    browser.execute_script("const v = document.getElementById('player'); v.pause(); v.currentTime = 0.5;")
    shot = tmp_path / "serve.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 1000
    if os.environ.get("PATCHFLOW_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["PATCHFLOW_SCREENSHOT"])


def test_page_names_the_bad_field(server, browser):
    browser.get(server + "/")
    wait = WebDriverWait(browser, 30, poll_frequency=0.2)
    wait.until(lambda d: d.find_element(By.ID, "num_frames").get_attribute("value") == str(T))
    browser.find_element(By.ID, "prompt").send_keys("a blue square")
    frames = browser.find_element(By.ID, "num_frames")
    frames.clear()
    frames.send_keys("6")  # not 1 + 4k
    browser.find_element(By.ID, "generate").click()
    wait.until(lambda d: d.find_element(By.ID, "error").is_displayed())
    assert "got 6" in browser.find_element(By.ID, "error").text
    assert "invalid" in frames.get_attribute("class")
    assert browser.find_element(By.ID, "player").get_attribute("hidden") is not None  # no video for bad input
