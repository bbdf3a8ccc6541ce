"""The HTTP service (serve.py is its command line): a FastAPI application around one loaded
EmotionRecognizer that answers /predict and /health, serves the web page and browses the run
folder's results; and BackgroundServer, which serves it from a thread (the browser test, scripts)."""
import json
import logging
import math
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
from fastapi import FastAPI, File, Form, Query, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from starlette.exceptions import HTTPException

from dataio.audio import AudioError, audio_info, audio_suffixes, read_frames
from dataio.corpus import audio_paths
from inference.prediction import PredictError
from inference.recognizer import EmotionRecognizer
from inference.transcripts import EMPTY_FIX_PAGE, empty_transcript_note
from inference.windows import timeline_table
from models.errors import MMERError

log = logging.getLogger("mmer.serve")
WEB = Path(__file__).resolve().parents[1] / "web"  # the page's files, at the repository's top
WEB_FILES = {"/": ("index.html", "text/html"), "/app.js": ("app.js", "text/javascript"),
             "/style.css": ("style.css", "text/css")}
# Nothing outside this service may load into the page; recordings play from blob: URLs.
CSP = ("default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
PICTURE_PATTERNS = ("confusion_matrix.png", "confusion_matrix_*.png", "learning_curves.png", "reliability_diagram.png")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Limits:
    """What /predict accepts: request bodies up to `max_mb` MB (1 MB = 2**20 bytes, multipart
    overhead included) and recordings up to `max_seconds` long."""
    max_seconds: float = 600.0
    max_mb: float = 50.0

    @property
    def max_bytes(self) -> int:
        return int(self.max_mb * 2**20)


class ServiceError(MMERError):
    """A request the service refuses; `status` is the HTTP status, the message says what to do."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------- audio of an upload
def decode_upload(upload, name: str, limits: Limits):
    """An uploaded file (a binary file object) -> ([samples, channels] float32, sample rate); the
    duration is read from the header and checked before the samples are decoded."""
    upload.seek(0, 2)
    if upload.tell() == 0:
        raise ServiceError(400, f"{name}: the upload is empty (0 bytes); choose an audio file or record a clip")
    try:
        info = audio_info(upload)
        check_duration(info.duration, name, limits)
        samples, rate = read_frames(upload, info=info)
    except AudioError as err:
        raise ServiceError(415, f"{name}: not audio this service can read ({err.reason}); send one of "
                               f"{', '.join(audio_suffixes())} (the page converts its own recordings to .wav)") from err
    if samples.size == 0:
        raise ServiceError(400, f"{name}: the audio holds no samples; record or choose a clip with sound in it")
    check_duration(len(samples) / rate, name, limits)  # headers of streamed formats may understate it
    return samples, rate


def check_duration(seconds: float, name: str, limits: Limits) -> None:
    if seconds > limits.max_seconds:
        raise ServiceError(413, f"{name}: {seconds:.1f} s of audio, longer than this service's limit of "
                               f"{limits.max_seconds:g} s (--max_seconds); send a shorter excerpt")


def prediction_json(prediction, classes, seconds: float, name: str | None = None,
                    attribute_range: list | None = None) -> dict:
    """The answer to /predict; `notes`: what the page shows beside it (an empty transcript, said
    as predict.py says it, with the page's fix). A model with an attribute head adds `attributes`
    {name: value in the corpus's units} and their scale `attribute_range` [low, high] (and each
    window's attributes in `windows`); one trained with --task dimensional answers label null,
    no probabilities and no classes (its classifier was never trained)."""
    note = empty_transcript_note(prediction, EMPTY_FIX_PAGE, name)
    result = {"label": prediction.label, "probabilities": prediction.probabilities,
              "transcript": prediction.transcript, "transcript_source": prediction.transcript_source,
              "classes": classes if prediction.label is not None else [], "duration_s": seconds,
              "notes": [note] if note else []}
    if prediction.attributes is not None:
        result.update(attributes=prediction.attributes, attribute_range=attribute_range)
    if prediction.windows:
        result["windows"] = timeline_table(prediction).to_dict(orient="records")
    return result


# ---------------------------------------------------------------- the run folder
def finite(value):
    """JSON has no NaN: non-finite numbers (a missing metric) become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


def run_file(path: Path, run_dir: Path) -> Path | None:
    """`path`, symlinks followed, when it is a regular file inside the run folder; else None (a
    link out of it, a folder, a device, nothing). The browser reads and serves no other file."""
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    return real if real.is_relative_to(run_dir.resolve()) and real.is_file() else None


def is_png(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(len(PNG_SIGNATURE)) == PNG_SIGNATURE


def run_pictures(run_dir: Path) -> dict[str, Path]:
    """{file name: path} of the pictures run.py writes into a run folder (PNG files inside it);
    nothing else is served."""
    found = {p.name: real for pattern in PICTURE_PATTERNS for p in run_dir.glob(pattern)
             if (real := run_file(p, run_dir)) is not None and is_png(real)}
    return dict(sorted(found.items(), key=lambda item: (item[0] != "confusion_matrix.png", item[0])))


def run_summary(run_dir: Path) -> dict:
    results = run_file(run_dir / "results.json", run_dir)
    if results is None:
        raise ServiceError(404, f"{run_dir / 'results.json'}: no results in this run folder yet (a run writes them "
                               "when its folds finish); the prediction service works without them")
    markdown = run_file(run_dir / "results.md", run_dir)
    return {"run_dir": str(run_dir), "results": finite(json.loads(results.read_text())),
            "results_md": markdown.read_text() if markdown else "",
            "pictures": list(run_pictures(run_dir)), "folds": sorted(prediction_files(run_dir))}


def prediction_files(run_dir: Path) -> dict[str, Path]:
    """{fold: <fold>_predictions.csv}, the files inside the run folder."""
    return {p.name[: -len("_predictions.csv")]: real for p in run_dir.glob("*_predictions.csv")
            if (real := run_file(p, run_dir)) is not None}


def read_predictions(run_dir: Path) -> pd.DataFrame:
    """All folds' test predictions, with `fold`, `p_true` (the probability given to the true class)
    and `correct`; errors first, the least probable true class first, then the correct ones. A run
    trained with --task dimensional predicts no class: `correct` and `p_true` are then null (its
    pred_<attribute> columns are there as they were written)."""
    frames = []
    for fold, path in sorted(prediction_files(run_dir).items()):
        frame = pd.read_csv(path, dtype={"FileName": str, "true_label": str, "predicted_label": str},
                            keep_default_na=False)
        frame.insert(0, "fold", fold)
        frames.append(frame)
    if not frames:
        raise ServiceError(404, f"{run_dir}: no <fold>_predictions.csv in this run folder")
    table = pd.concat(frames, ignore_index=True)
    if "predicted_label" not in table:
        return table.assign(p_true=np.nan, correct=None)
    columns = [c for c in table.columns if c.startswith("prob_")]
    which = np.array([columns.index(f"prob_{label}") if f"prob_{label}" in columns else -1
                      for label in table["true_label"]], dtype=int)
    probs = table[columns].to_numpy(dtype=float)
    table["p_true"] = np.where(which >= 0, probs[np.arange(len(table)), which.clip(0)], np.nan)
    table["correct"] = table["true_label"] == table["predicted_label"]
    return table.sort_values(["correct", "p_true"], kind="stable").reset_index(drop=True)


def recorded_corpus(run_dir: Path) -> tuple[pd.DataFrame | None, Path]:
    """The corpus table the run was trained on (None when it is gone) and its audio folder, from
    the run's config.json (run.csv_path, run.data_path_audio)."""
    config = run_dir / "config.json"
    try:
        recorded = json.loads(config.read_text())["run"]
        csv_path, audio_dir = Path(recorded["csv_path"]), Path(recorded["data_path_audio"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ServiceError(404, f"{config}: no recorded corpus (run.csv_path, run.data_path_audio): {err}") from err
    table = pd.read_csv(csv_path, dtype=str, keep_default_na=False) if csv_path.is_file() else None
    return (table if table is not None and "FileName" in table.columns else None), audio_dir


def utterance_audio(run_dir: Path, name: str) -> Path:
    """The audio file of an utterance of the run's predictions, found as training found it (the
    corpus table's `path`, else <FileName>.wav in the recorded audio folder). Only names in the
    predictions are looked up; a name is never turned into a path itself; see served_audio for
    which files are served."""
    if name not in set(read_predictions(run_dir)["FileName"]):
        raise ServiceError(404, f"{name!r} is not an utterance of this run's predictions")
    table, audio_dir = recorded_corpus(run_dir)
    row = table[table["FileName"] == name] if table is not None else []
    path = audio_paths(row, audio_dir)[0] if len(row) else audio_dir / f"{name}.wav"
    return served_audio(path, audio_dir, name)


def served_audio(path: Path, audio_dir: Path, name: str) -> Path:
    """`path` when it lies in the recorded audio folder (its folders, symlinks followed, inside
    it: a table's absolute path or `..` elsewhere is refused) and is a regular file that reads
    as audio. The file itself may be a link, as data_prep's --link makes them, to audio elsewhere."""
    placed = Path(os.path.abspath(path))
    if not placed.parent.resolve().is_relative_to(Path(audio_dir).resolve()):
        raise ServiceError(403, f"{path}: the corpus table names audio outside the run's recorded audio folder "
                                f"{audio_dir} (run.data_path_audio in config.json); only audio there is served")
    if not placed.is_file():
        raise ServiceError(404, f"{path}: the audio of {name} is not there any more (moved or deleted)")
    try:
        audio_info(placed)
    except AudioError as err:
        raise ServiceError(403, f"{path}: not audio ({err.reason}); only the corpus's audio is served") from err
    return placed


class BodyLimit:
    """ASGI middleware: a request to `path` whose body is over `max_bytes` gets 413 with `message`,
    from its Content-Length before any of it is read, or as soon as a body streamed without one
    passes the limit (Starlette would otherwise spool the whole upload to disk first)."""

    class TooLarge(HTTPException):
        """An HTTPException, so that FastAPI's form parsing passes it on instead of answering 400."""

    def __init__(self, app, path: str, max_bytes: int, message: str):
        self.app, self.path, self.max_bytes, self.message = app, path, max_bytes, message

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != self.path:
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            return await self.refuse(scope, receive, send)
        received, started = 0, False

        async def capped_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise BodyLimit.TooLarge(413, self.message)
            return message

        async def watched_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, capped_receive, watched_send)
        except BodyLimit.TooLarge:
            if started:
                raise
            await self.refuse(scope, receive, send)

    async def refuse(self, scope, receive, send):
        await JSONResponse({"detail": self.message}, status_code=413)(scope, receive, send)


# ---------------------------------------------------------------- the app
def create_app(recognizer: EmotionRecognizer, run_dir, limits: Limits | None = None) -> FastAPI:
    """The service around one loaded recognizer; `run_dir` is the run folder it came from (its
    results are browsed, its recorded corpus supplies the utterances' audio)."""
    limits = limits or Limits()
    app = FastAPI(title="MMER emotion recognition", docs_url=None, redoc_url=None, openapi_url=None)
    add_error_handlers(app)
    app.add_middleware(BodyLimit, path="/predict", max_bytes=limits.max_bytes,
                       message=f"the upload is larger than this service's limit of {limits.max_mb:g} MB (--max_mb); "
                               "send a shorter recording or a compressed one (flac, ogg)")

    @app.middleware("http")
    async def security_headers(request, call_next):
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    add_prediction_routes(app, recognizer, Path(run_dir), limits)
    add_run_browser_routes(app, Path(run_dir))
    for route, (file_name, media_type) in WEB_FILES.items():
        app.add_api_route(route, web_file(file_name, media_type), methods=["GET", "HEAD"], include_in_schema=False)
    return app


def add_error_handlers(app: FastAPI) -> None:
    """Every refusal is JSON {"detail": "<what is wrong and what to do>"}."""
    @app.exception_handler(ServiceError)
    def refused(request, err: ServiceError):
        return JSONResponse({"detail": str(err)}, status_code=err.status)

    @app.exception_handler(RequestValidationError)
    def invalid(request, err: RequestValidationError):
        fields = "; ".join(f"{'.'.join(str(x) for x in e['loc'][1:]) or 'request'}: {e['msg']}" for e in err.errors())
        return JSONResponse({"detail": f"{fields} (send the audio as the multipart form field 'file', "
                                       "the optional transcript as 'transcript')"}, status_code=422)


def add_prediction_routes(app: FastAPI, recognizer: EmotionRecognizer, run_dir: Path, limits: Limits) -> None:
    sessions = [Path(p).name.split("_model")[0] for p in recognizer.models]

    @app.post("/predict")
    def predict(file: Annotated[UploadFile, File()], transcript: Annotated[str | None, Form()] = None):
        # A plain def: FastAPI runs it in its thread pool; the recognizer takes the calls in turn.
        name = file.filename or "upload"
        samples, rate = decode_upload(file.file, name, limits)
        start = time.perf_counter()
        try:
            prediction = recognizer.predict(samples, transcript=transcript or None, sample_rate=rate, name=name)
        except (PredictError, AudioError) as err:
            raise ServiceError(422, str(err)) from err
        seconds = len(samples) / rate
        said = prediction.label if prediction.label is not None else \
            ", ".join(f"{a} {v:.2f}" for a, v in prediction.attributes.items())
        log.info("%s: %.2f s of audio -> %s (%.0f ms)", name, seconds, said, 1000 * (time.perf_counter() - start))
        return prediction_json(prediction, recognizer.classes, seconds, name, recognizer.attribute_range)

    @app.get("/health")
    def health():
        return {"status": "ok", "run": recognizer.run, "run_dir": str(run_dir), "classes": recognizer.classes,
                "predicts_classes": recognizer.predicts_classes, "attributes": recognizer.attributes,
                "attribute_range": recognizer.attribute_range,
                "sessions": sessions, "ensemble": len(sessions) > 1, "sample_rate": recognizer.sample_rate,
                "reads_text": recognizer.first.uses_text,
                "asr": recognizer.asr.name if recognizer.asr is not None else None,
                "long_seconds": recognizer.windows.long_seconds, "limits": asdict(limits)}


def add_run_browser_routes(app: FastAPI, run_dir: Path) -> None:
    """The run folder's results, its pictures and its test predictions with their audio; only
    files the run wrote (pictures) or named (the predictions' utterances) are served."""
    @app.get("/api/run")
    def run_results():
        return run_summary(run_dir)

    @app.get("/api/predictions")
    def predictions(limit: int = Query(100, ge=1, le=100000), fold: str | None = None):
        table = read_predictions(run_dir)
        if fold is not None:
            table = table[table["fold"] == fold]
        rows = finite(table.head(limit).to_dict(orient="records"))
        errors = int((~table["correct"].astype(bool)).sum()) if "predicted_label" in table else None
        return {"total": len(table), "errors": errors, "rows": rows}

    @app.get("/runs/image/{name}")
    def picture(name: str):
        pictures = run_pictures(run_dir)
        if name not in pictures:
            raise ServiceError(404, f"{name!r} is not a picture of this run (there: {', '.join(pictures) or 'none'}; "
                                    "only PNG files inside the run folder are served, never a link out of it)")
        return FileResponse(pictures[name], media_type="image/png")

    @app.get("/runs/audio")
    def audio(name: str):
        return FileResponse(utterance_audio(run_dir, name))


def web_file(name: str, media_type: str):
    def serve():
        return FileResponse(WEB / name, media_type=media_type, headers={"Cache-Control": "no-cache"})
    return serve


class BackgroundServer:
    """The app served by uvicorn from a thread, on a free port of `host` (for the browser test and
    scripts/screenshot_page.py): `with BackgroundServer(app) as url: ...`."""

    def __init__(self, app, host: str = "127.0.0.1"):
        import uvicorn
        self.socket = socket.socket()
        self.socket.bind((host, 0))
        self.url = f"http://{host}:{self.socket.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the service did not start on {self.url}")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.socket.close()
