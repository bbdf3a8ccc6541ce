"""Screenshots of serve.py's web page for the README: the page after a prediction, and the run
browser. The prediction is of the served fold's best recognised test utterance with its transcript
from the corpus table typed in; with --long S, of an S-second recording stitched from well
recognised test utterances of each class in turn (long enough for the timeline; mmer reads no
typed transcript then, each window is transcribed by the model). Chromium from the Debian packages
(/usr/bin/chromium), driven by Playwright; the service runs in this process on a free port.

    python scripts/screenshot_page.py RUN_DIR [--out assets] [--long 40]
"""
import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.threads import before_torch  # noqa: E402

before_torch()  # as serve.py: OpenMP reads its waiting policy when torch loads it (utils/threads.py)

import numpy as np  # noqa: E402
from playwright.sync_api import expect, sync_playwright  # noqa: E402

from inference import service  # noqa: E402
from inference.recognizer import EmotionRecognizer  # noqa: E402
from dataio.audio import read_audio, write_wav  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def best_utterance(run_dir: Path, fold: str) -> tuple[Path, str]:
    """The served fold's correct test prediction with the most probable true class: its audio and
    its transcript from the corpus table ("" where the table has none)."""
    table = service.read_predictions(run_dir)
    best = table[(table["fold"] == fold) & table["correct"]].sort_values("p_true").iloc[-1]["FileName"]
    corpus, _ = service.recorded_corpus(run_dir)
    column = next((c for c in ("transcript", "Sentences") if corpus is not None and c in corpus.columns), None)
    text = corpus.loc[corpus["FileName"] == best, column].iloc[0] if column else ""
    return service.utterance_audio(run_dir, best), text


def stitched_recording(run_dir: Path, classes: list[str], seconds: float, path: Path) -> None:
    """Each class in turn, from its best recognised test utterances, `seconds` in all."""
    table = service.read_predictions(run_dir)
    table = table[table["correct"]].sort_values("p_true", ascending=False)
    parts = []
    for label in classes:
        have = 0.0
        for name in table.loc[table["true_label"] == label, "FileName"]:
            samples = read_audio(service.utterance_audio(run_dir, name))
            parts.append(samples)
            have += len(samples) / 16000
            if have >= seconds / len(classes):
                break
    write_wav(path, np.concatenate(parts), 16000)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="a finished run folder (<save_path>/<run>)")
    p.add_argument("--out", type=Path, default=Path("assets"), help="folder for serve_page.png and serve_runs.png")
    p.add_argument("--long", type=float, metavar="SECONDS", help="predict a recording this long, stitched from "
                                                                 "test utterances, to show the timeline")
    args = p.parse_args(argv)
    recognizer = EmotionRecognizer.from_run(args.run_dir, device="cpu")
    fold = Path(next(iter(recognizer.models))).name.split("_model")[0]
    app = service.create_app(recognizer, args.run_dir)
    with tempfile.TemporaryDirectory() as tmp, service.BackgroundServer(app) as url, sync_playwright() as playwright:
        transcript = ""
        if args.long:
            clip = Path(tmp) / "stitched_test_utterances.wav"
            stitched_recording(args.run_dir, recognizer.classes, args.long, clip)
        else:
            clip, transcript = best_utterance(args.run_dir, fold)
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 900}, device_scale_factor=1)
        page.goto(f"{url}/")
        page.set_input_files("#file", str(clip))
        page.fill("#transcript", transcript)
        page.click("#predict-button")
        expect(page.locator("#timeline-box" if args.long else "#result")).to_be_visible(timeout=120_000)
        page.screenshot(path=str(args.out / "serve_page.png"), full_page=True)
        page.click("#tab-runs")
        page.locator("#predictions-table tbody tr").first.wait_for()
        for picture in page.locator("#pictures img").all():
            expect(picture).to_have_js_property("complete", True)
        page.screenshot(path=str(args.out / "serve_runs.png"), full_page=True)
        browser.close()
    print(f"wrote {args.out / 'serve_page.png'} and {args.out / 'serve_runs.png'}")


if __name__ == "__main__":
    main()
