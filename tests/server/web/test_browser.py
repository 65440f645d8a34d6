"""The playground page in a real browser: Debian's headless Chromium, driven by Selenium
through chromedriver. The page lists the models, plays a live session through the
JavaScript client's AudioWorklet (Opus decoded by WebCodecs), follows a slider within the
lookahead, downloads a clip of the exact length, asks for a token, and a foreign page
cannot open a session. The screenshot lands in the test's output folder."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import soundfile as sf
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from distill_serve.server.engine.engine import Engine
from tests.server.web.conftest import WebServer

ROOT = Path(__file__).resolve().parents[3]
LOOKAHEAD_S = 0.3
PLAY_S = 10.0


def chromium() -> tuple[str, str]:
    found = shutil.which("chromium"), shutil.which("chromedriver")
    if not all(found):
        pytest.fail(
            "the browser test needs Debian's chromium and chromium-driver "
            "(apt-get install chromium chromium-driver; .ci/run installs them)"
        )
    return found  # type: ignore[return-value]


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    binary, driver = chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in a container
        "--disable-dev-shm-usage",
        "--autoplay-policy=no-user-gesture-required",
        "--window-size=1400,820",
    ):
        options.add_argument(arg)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options.add_experimental_option(
        "prefs",
        {"download.default_directory": str(downloads), "download.prompt_for_download": False},
    )
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    chrome.downloads = downloads  # type: ignore[attr-defined]
    try:
        yield chrome
    finally:
        chrome.quit()


def until(chrome: webdriver.Chrome, check: Callable[[], Any], timeout: float, what: str) -> Any:
    try:
        return WebDriverWait(chrome, timeout, poll_frequency=0.2).until(lambda _: check())
    except Exception as exc:
        logs = "\n".join(str(e) for e in chrome.get_log("browser")[-10:])
        raise AssertionError(f"{what} (browser log:\n{logs})") from exc


def page_state(chrome: webdriver.Chrome) -> dict[str, Any]:
    return chrome.execute_script(  # type: ignore[no-any-return]
        "const p = window.playground; return {stats: p.player && p.player.stats, "
        "heard: p.heardMs, errors: p.errors, downloads: p.downloads, "
        "encoding: p.session && p.session.encoding, first: p.firstAudioMs, "
        "maxGapMs: p.maxGapMs};"
    )


@pytest.mark.realtime
def test_the_playground_plays_steers_and_downloads(
    web: WebServer, browser: webdriver.Chrome, report: Callable[[str], None]
) -> None:
    chrome = browser
    chrome.get(web.url + "/")
    until(chrome, lambda: chrome.find_elements(By.CSS_SELECTOR, "#model option"), 30, "no models")
    assert chrome.find_elements(By.CSS_SELECTOR, "#sliders input[type=range]")
    chrome.find_element(By.ID, "play").click()
    until(
        chrome, lambda: (page_state(chrome)["stats"] or {}).get("playedS", 0) > 0.5, 30, "no audio"
    )
    levels = []
    while (state := page_state(chrome))["stats"]["playedS"] < PLAY_S:
        levels.append(state["stats"]["rms"])
        time.sleep(0.25)
    assert state["encoding"] == "opus", "Chromium's WebCodecs decodes Opus"
    assert max(levels) > 1e-3, f"the worklet played silence: {levels}"
    late = web.metric("distill_live_blocks_late_total")
    assert state["stats"]["underruns"] == 0, (
        f"{state}; the server sent {late:g} blocks late; longest gap between blocks "
        f"{state['maxGapMs']:.0f} ms"
    )
    assert not state["errors"], state["errors"]

    chrome.execute_script(
        "const s = document.getElementById('slider-0'); s.value = 8;"
        "s.dispatchEvent(new Event('input'));"
    )
    heard = until(chrome, lambda: page_state(chrome)["heard"], 10, "the slider was never heard")
    assert heard[0] <= (LOOKAHEAD_S + 0.5) * 1000, f"the slider was heard after {heard[0]:.0f} ms"
    time.sleep(1.0)  # the spectrogram shows the change
    shot = ROOT / "build" / "test-output" / "playground.png"  # build/ is git-ignored
    shot.parent.mkdir(parents=True, exist_ok=True)
    chrome.save_screenshot(str(shot))
    state = page_state(chrome)
    report(
        f"browser: first audio {state['first']:.0f} ms, slider heard after {heard[0]:.0f} ms, "
        f"underruns {state['stats']['underruns']} in {state['stats']['playedS']:.1f} s; "
        f"screenshot {shot}"
    )
    chrome.find_element(By.ID, "stop").click()
    until(chrome, lambda: web.live_sessions() == 0, 10, "the session outlived Stop")

    duration = chrome.find_element(By.ID, "duration")
    duration.clear()
    duration.send_keys("2.5")
    chrome.find_element(By.ID, "generate").click()
    downloads: Path = chrome.downloads  # type: ignore[attr-defined]
    files = until(
        chrome,
        lambda: [f for f in downloads.iterdir() if f.suffix == ".wav"],
        60,
        "no clip downloaded",
    )
    info = sf.info(str(files[0]))
    assert info.frames == round(2.5 * info.samplerate) and info.samplerate == 48000


@pytest.fixture(scope="module")
def guarded(engine: Engine) -> Iterator[WebServer]:
    server = WebServer(engine, auth_tokens=("page-token",))
    yield server
    server.stop()


def test_the_page_asks_for_a_token_and_refuses_a_wrong_one(
    guarded: WebServer, browser: webdriver.Chrome
) -> None:
    chrome = browser
    chrome.get(guarded.url + "/")
    until(chrome, lambda: chrome.find_element(By.ID, "login-panel").is_displayed(), 20, "no login")
    chrome.find_element(By.ID, "token").send_keys("wrong")
    chrome.find_element(By.ID, "login").click()
    until(chrome, lambda: page_state(chrome)["errors"], 10, "a wrong token was not refused")
    assert "not accepted" in page_state(chrome)["errors"][0]
    assert not chrome.find_elements(By.CSS_SELECTOR, "#model option")
    token = chrome.find_element(By.ID, "token")
    token.clear()
    token.send_keys("page-token")
    chrome.find_element(By.ID, "login").click()
    until(chrome, lambda: chrome.find_elements(By.CSS_SELECTOR, "#model option"), 20, "no models")
    assert not chrome.find_element(By.ID, "login-panel").is_displayed()
    # the token went into an HttpOnly cookie: the page's scripts cannot read it
    assert "page-token" not in chrome.execute_script("return document.cookie")


def test_a_foreign_page_cannot_open_a_session(
    web: WebServer, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    (tmp_path / "index.html").write_text("<!doctype html><title>elsewhere</title>")
    handler = partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    other = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        browser.get(f"http://localhost:{other.server_address[1]}/")
        outcome = browser.execute_async_script(
            """
            const [wsUrl, httpUrl, done] = arguments;
            const result = {opened: false};
            const ws = new WebSocket(wsUrl, ["distill.v1"]);
            ws.onopen = () => { result.opened = true; };
            ws.onclose = async (e) => {
              result.code = e.code;
              try { await fetch(httpUrl, {credentials: "include"}); result.fetched = true; }
              catch (err) { result.fetched = false; }
              done(result);
            };
            """,
            web.ws_url,
            web.url + "/api/models",
        )
    finally:
        other.shutdown()
    assert outcome == {"opened": False, "code": 1006, "fetched": False}, outcome
    assert web.live_sessions() == 0
