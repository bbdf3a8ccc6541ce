r"""Emotion recognition as an HTTP service, with a web page and a browser for the run's results.

    python serve.py --checkpoint_dir runs/mmer [--host 127.0.0.1] [--port 8000] [--session N | --ensemble] \
        [--asr openai/whisper-small] [--device auto] [--max_seconds 600] [--max_mb 50]

Loads the run once (inference.EmotionRecognizer) and answers:

    POST /predict        multipart: the audio in `file` (any format, rate or channel count
                         dataio.audio reads: libsndfile's and FFmpeg's containers), optional `transcript` -> label, probabilities, transcript used and its
                         source, duration; for recordings over 30 s the timeline of windows; for a
                         run trained with --task dimensional|both the attributes (corpus units) and
                         their attribute_range, shown on the page on a valence-arousal plane and,
                         for long recordings, over time (--task dimensional: label null, no classes)
    GET  /health         run, classes, attributes and their range, sessions loaded, limits
    GET  /               the web page (upload or record a clip; the run browser in its second tab)
    GET  /api/run        the run folder's results (results.json, results.md) and the names of its pictures
    GET  /api/predictions  the run's test predictions, worst errors first
    GET  /runs/image/NAME  one of the run's pictures (confusion matrices, learning curves)
    GET  /runs/audio?name=FILENAME  the audio of an utterance that is in the run's predictions

Uploads over --max_mb (the request body, refused from its Content-Length before it is read, or
as soon as a streamed body passes it) or recordings over --max_seconds are refused with 413,
anything dataio.audio cannot read with 415, an empty upload with 400; the message says what to do.
Requests may come at once: the recognizer takes them in turn.
"""
import argparse
import logging

from utils.threads import before_torch, configure_threads

before_torch()  # OpenMP reads its waiting policy when torch loads it (utils/threads.py)

from inference.recognizer import EmotionRecognizer  # noqa: E402
from inference.service import Limits, create_app  # noqa: E402
from utils.cli import HelpFormatter, Parser, add_number  # noqa: E402
from models.errors import MMERError  # noqa: E402

log = logging.getLogger("mmer.serve")


# ---------------------------------------------------------------- command line
def parse_args(argv=None) -> argparse.Namespace:
    p = Parser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--checkpoint_dir", required=True, help="the run folder (<save_path>/<run>) with its "
                                                           "<session>_model.pt files")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    add_number(p, "--port", int, 0, 65535, default=8000, help="port to listen on")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--session", help="use <session>_model.pt (default: the first found)")
    which.add_argument("--ensemble", action="store_true", help="average the probabilities of all checkpoints")
    p.add_argument("--asr", help="mmer: a transformers speech recogniser (e.g. openai/whisper-small) for uploads "
                                 "without a transcript, instead of the model's own CTC head")
    p.add_argument("--language", help="--asr: the language for a multilingual Whisper (e.g. en, french)")
    p.add_argument("--roberta", help="text encoder for mmer (default: the one recorded in the run's config.json)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="auto and fp32: fp32 (exact); bf16: bf16 autocast (faster on a GPU or a CPU with native bf16)")
    add_number(p, "--threads", int, 1, default=None, help="torch CPU threads (default: the CPUs this process may use)")
    add_number(p, "--max_seconds", float, 0, low_open=True, default=Limits.max_seconds,
               help="longest recording accepted, in seconds (longer: 413)")
    add_number(p, "--max_mb", float, 0, low_open=True, default=Limits.max_mb,
               help="largest request body accepted, in MB of 2**20 bytes (larger: 413, refused before reading it)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    import uvicorn
    from transformers.utils import logging as hf_logging


    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    hf_logging.disable_progress_bar()
    configure_threads(args.threads)
    try:
        recognizer = EmotionRecognizer.from_run(args.checkpoint_dir, args.session, args.ensemble, roberta=args.roberta,
                                                device=args.device, precision=args.precision, asr=args.asr,
                                                language=args.language)
    except (MMERError, OSError) as err:
        raise SystemExit(f"error: {err}") from err
    app = create_app(recognizer, args.checkpoint_dir, Limits(args.max_seconds, args.max_mb))
    log.info("serving %s (%s) on http://%s:%d/", args.checkpoint_dir, recognizer.run, args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
