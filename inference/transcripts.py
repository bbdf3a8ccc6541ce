"""Where mmer's transcript comes from: a csv's column (the one the run's text features were made
from, recorded in its config.json), or, when none is given, a speech recogniser (transformers'
or faster-whisper's, dataio/asr.py) or the model's own CTC head, decoded greedily; and the note
for a recording whose transcript came out empty."""
import json
import logging
from pathlib import Path

import torch

from dataio.asr import TranscribeError, generate_kwargs, load_recogniser, model_stamp, recognise
from dataio.text import ctc_tokenizer
from dataio.text_features import DEFAULT_TEXT_COLUMN
from inference.prediction import PredictError
from models import text

log = logging.getLogger("mmer.inference")
# What to do about an empty transcript, on the command line (predict.py) and on serve.py's page:
# (giving the transcript, giving a speech recogniser).
EMPTY_FIX = ("give its transcript (--transcript, or a csv's transcript column)",
             "pass a speech recogniser (--asr, e.g. openai/whisper-small)")
EMPTY_FIX_PAGE = ("type its transcript in the box above",
                  "start serve.py with a speech recogniser (--asr, e.g. openai/whisper-small)")


class Recogniser:
    """A speech recogniser, transformers' or faster-whisper's (dataio/asr.py's loading and decoding), that
    transcribes 16 kHz recordings for mmer, where no transcript is given."""

    def __init__(self, asr: str, language: str | None, device, backend: str = "auto"):
        try:
            stamp = model_stamp(asr, language, num_beams=1, backend=backend, device=device)
            self.pipeline = load_recogniser(asr, device, stamp)
        except TranscribeError as err:
            raise PredictError(str(err)) from err
        self.settings = generate_kwargs(self.pipeline, stamp)
        self.name, self.language = stamp["model"], stamp["language"]

    def __call__(self, samples: list, sample_rate: int) -> list[str]:
        log.info("transcribing %d recording(s) with %s", len(samples), self.name)
        return recognise(self.pipeline, samples, sample_rate, self.settings, batch_size=8)


def decode_ctc(ctc_logits: torch.Tensor, frame_lengths: torch.Tensor) -> list[str]:
    """Greedy CTC with the 32-symbol vocabulary: argmax per valid frame (models.text.decode_ctc)."""
    return text.decode_ctc(ctc_logits, frame_lengths, ctc_tokenizer())


def recorded_text_column(checkpoint_dir) -> str | None:
    """The csv column the run's text features were made from: their encoder.json, which run.py
    copies into <checkpoint_dir>/config.json as `text_encoder` (one written before the column was
    recorded means Sentences, extract_roberta.py's default). None where the run records no
    features (upstream's checkpoints, an audio-only model, a folder without config.json)."""
    config = Path(checkpoint_dir) / "config.json"
    if not config.is_file():
        return None
    try:
        stamp = json.loads(config.read_text()).get("text_encoder")
    except (json.JSONDecodeError, AttributeError) as err:
        raise PredictError(f"{config}: not the config.json run.py writes ({err}); name the transcript column "
                           "with --text_column") from err
    return stamp.get("text_column", DEFAULT_TEXT_COLUMN) if isinstance(stamp, dict) else None


def empty_transcript_note(prediction, fix: tuple[str, str] = EMPTY_FIX, name: str | None = None) -> str | None:
    """A recording whose transcript came out empty (the CTC head or the speech recogniser heard no
    words, in the whole clip or in some of a long one's windows), so mmer read `<s></s>` only:
    one sentence naming it and the fix (`fix`: how to give a transcript, how to give a speech
    recogniser; a long recording's windows are transcribed whatever is given, so only the
    second helps there). None when every text it read had words."""
    parts = [w.prediction for w in prediction.windows] if prediction.windows else [prediction]
    empty = [p for p in parts if p.transcript_source in ("ctc", "asr") and not p.transcript.strip()]
    if not empty:
        return None
    by_asr = empty[0].transcript_source == "asr"
    heard = "the speech recogniser" if by_asr else "the model's CTC head"
    if prediction.windows:
        where = f" in {len(empty)} of its {len(parts)} windows"
        todo = ("check that it holds speech" if by_asr else
                f"{fix[1]}: a long recording's windows are each transcribed, a transcript of the whole is not "
                "split over them")
    else:
        where, todo = "", fix[0] if by_asr else f"{fix[0]}, or {fix[1]}"
    return (f"{name or prediction.source}: {heard} heard no words{where}, so the text the model read there was "
            f"empty and its emotion rests on the audio alone; {todo}")
