"""Where mmer's transcript comes from when none is given: a speech recogniser (transformers' or
faster-whisper's, dataio/asr.py) or the model's own CTC head, decoded greedily."""
import logging

import torch

from dataio.asr import TranscribeError, generate_kwargs, load_recogniser, model_stamp, recognise
from dataio.text import ctc_tokenizer
from inference.prediction import PredictError
from models import text

log = logging.getLogger("mmer.inference")


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
