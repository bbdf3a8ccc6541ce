"""serve.py's web page in a real browser (Debian's Chromium, /usr/bin/chromium, driven by
Playwright), against the service on a free localhost port: a clip uploaded through the file input
gets its predicted label; a clip recorded from Chromium's fake microphone is sent as a 16 kHz mono
WAV the page encodes itself; the run browser shows the results table, the pictures and playable
worst errors; nothing the page loads comes from anywhere else. Skipped, saying why, where there
is no Chromium."""
import io
import re
from pathlib import Path

import pandas as pd
import pytest
import soundfile as sf

import run
from inference import service as serve
from inference.recognizer import EmotionRecognizer

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements.txt)")
expect, sync_playwright = sync_api.expect, sync_api.sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
# No network, no GPU, no sandbox (containers), no first-run or background traffic; a fake
# microphone that plays a beep, allowed without asking.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}: install it with `apt-get install -y chromium` (Debian) to run the "
                    "web page's browser test")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class UploadSpy:
    """ASGI wrapper that keeps the body of every POST /predict, as the browser sent it."""

    def __init__(self, app):
        self.app, self.bodies = app, []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != "/predict":
            return await self.app(scope, receive, send)
        self.bodies.append(b"")

        async def kept():
            message = await receive()
            self.bodies[-1] += message.get("body", b"")
            return message
        await self.app(scope, kept, send)


@pytest.fixture(scope="module")
def service(demo, tmp_path_factory):
    """A tiny real run (one fold, one epoch) served on a free port: (url, run folder, recognizer, spy)."""
    save = tmp_path_factory.mktemp("web")
    run.main(demo.flags(run="mmer", epochs=1, sessions="1", save_path=save))
    run_dir = save / "mmer"
    recognizer = EmotionRecognizer.from_run(run_dir, device="cpu")
    spy = UploadSpy(serve.create_app(recognizer, run_dir))
    with serve.BackgroundServer(spy) as url:
        yield url, run_dir, recognizer, spy


@pytest.fixture
def page(browser, service):
    """A fresh page that records every URL it asks for and every script error."""
    url = service[0]
    context = browser.new_context()
    context.grant_permissions(["microphone"], origin=url)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.requested, page.errors = [], []
    page.on("request", lambda request: page.requested.append(request.url))
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.on("console", lambda message: message.type == "error" and page.errors.append(message.text))
    yield page
    context.close()


def assert_nothing_from_elsewhere(page, url):
    outside = [u for u in page.requested if not u.startswith((f"{url}/", "blob:", "data:"))]
    assert not outside, outside
    assert not page.errors, page.errors


def test_an_uploaded_clip_gets_its_predicted_label(page, service, demo):
    url, run_dir, recognizer, _ = service
    clip = demo.audio / f"{pd.read_csv(run_dir / '1_predictions.csv')['FileName'].iloc[0]}.wav"
    page.goto(f"{url}/")
    page.set_input_files("#file", str(clip))
    page.click("#predict-button")
    page.locator("#result").wait_for(state="visible")
    assert page.inner_text("#label") == recognizer.predict(clip).label
    assert page.locator("#bars .fill").count() == len(recognizer.classes)
    assert page.inner_text("#source") == "the model's CTC head"
    assert_nothing_from_elsewhere(page, url)


def test_a_recorded_clip_is_sent_as_a_16k_mono_wav(page, service):
    url, _, recognizer, spy = service
    page.goto(f"{url}/")
    page.click("#record")
    expect(page.locator("#record-time")).to_contain_text("recording… 1.")
    page.click("#record")
    expect(page.locator("#chosen")).to_contain_text("recording.wav")
    page.click("#predict-button")
    page.locator("#result").wait_for(state="visible")
    body = spy.bodies[-1]
    wav = body[body.index(b"RIFF"):body.rindex(b"\r\n--")]
    info = sf.info(io.BytesIO(wav))
    assert (info.format, info.samplerate, info.channels, info.subtype) == ("WAV", 16000, 1, "PCM_16")
    assert 0.8 < info.duration < 5
    samples, rate = sf.read(io.BytesIO(wav), dtype="float32")
    assert abs(samples).max() > 0.01  # the fake microphone's beep, not silence
    assert page.inner_text("#label") == recognizer.predict(samples, sample_rate=rate).label
    assert_nothing_from_elsewhere(page, url)


def test_the_run_browser_shows_results_pictures_and_worst_errors(page, service):
    url, run_dir, _, _ = service
    page.goto(f"{url}/")
    page.click("#tab-runs")
    page.locator("#predictions-table tbody tr").first.wait_for()
    table = page.inner_text("#results-table")
    assert re.search(r"mean\s+\d+\s+\d+\.\d\d", table) and "std" in table
    assert page.locator("#picture-tabs button").count() == page.locator("#pictures img").count() == 4
    for k, picture in enumerate(page.locator("#pictures img").all()):
        page.locator("#picture-tabs button").nth(k).click()
        expect(picture).to_be_visible()
        expect(picture).to_have_js_property("complete", True)
        assert picture.evaluate("image => image.naturalWidth") > 100
    predictions = pd.read_csv(run_dir / "1_predictions.csv")
    rows = page.locator("#predictions-table tbody tr")
    assert rows.count() == min(25, len(predictions))  # app.js PAGE_ROWS
    assert rows.first.locator("td").nth(2).inner_text() == serve.read_predictions(run_dir)["FileName"].iloc[0]
    rows.first.locator("button.play").click()
    expect(page.locator("#player")).to_have_js_property("readyState", 4)  # the whole clip is in
    assert page.locator("#player").evaluate("player => player.duration") > 0.1
    assert_nothing_from_elsewhere(page, url)
