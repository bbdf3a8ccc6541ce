"""Speech recognisers: any transformers speech-recognition model (Whisper, wav2vec2-CTC, ...)
through its pipeline, or a CTranslate2 Whisper through faster-whisper (int8 on a CPU); the stamp
that identifies their transcripts, their decoding settings, and the WER they are scored by."""
import hashlib
import json
import logging
import re
from pathlib import Path

import jiwer
import numpy as np
from transformers import AutoConfig, GenerationConfig, pipeline
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CTC_MAPPING_NAMES,
    MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES,
    MODEL_FOR_TDT_MAPPING_NAMES,
)
from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

from dataio.text import NON_SPEECH_TAG
from models.errors import MMERError

log = logging.getLogger(__name__)
DEFAULT_ASR = "openai/whisper-small"
LOAD_HINT = ("pass a local folder written by save_pretrained, or a hub name (e.g. openai/whisper-small) "
             "with network access (offline: set HF_HUB_OFFLINE=1 to use the local cache)")
# The heads the automatic-speech-recognition pipeline can run: CTC, transducer, encoder-decoder.
RECOGNISER_CLASSES = {
    *MODEL_FOR_CTC_MAPPING_NAMES.values(),
    *MODEL_FOR_TDT_MAPPING_NAMES.values(),
    *MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES.values(),
}
ASR_BACKENDS = ("auto", "transformers", "faster-whisper")
CT2_MODEL = "model.bin"              # what makes a folder a CTranslate2 model (faster-whisper's format)
WHISPER_MULTILINGUAL_VOCAB = 51865   # Whisper's vocabulary: 51864 tokens for the English-only `*.en` models


class TranscribeError(MMERError, ValueError):
    """Bad input to the transcription; the message names the file and the fix."""


def asr_backend(asr, backend: str = "auto") -> str:
    """transformers, or faster-whisper (CTranslate2) for a folder holding model.bin (auto)."""
    if backend not in ASR_BACKENDS:
        raise TranscribeError(f"--asr_backend {backend}: choose one of {', '.join(ASR_BACKENDS)}")
    if backend != "auto":
        return backend
    return "faster-whisper" if (Path(str(asr)).expanduser() / CT2_MODEL).is_file() else "transformers"


# ---- words: the normalisation behind the WER -------------------------------------------------

def normalise_words(text: str) -> str:
    """Text as compared for the WER: non-speech tags ([LAUGHTER], {LG}) dropped, lower-case,
    apostrophes removed ("It's" -> "its", so both sides agree however they spell contractions),
    other punctuation read as a word boundary, spaces collapsed."""
    spoken = NON_SPEECH_TAG.sub(" ", str(text)).lower().replace("'", "").replace("\u2019", "")
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]|_", " ", spoken)).strip()


def word_error_rate(references, hypotheses) -> tuple[float | None, int]:
    """Corpus WER (jiwer: all edits over all reference words) after `normalise_words`, and the
    number of utterances it covers: those whose reference keeps at least one word."""
    pairs = [(normalise_words(ref), normalise_words(hyp)) for ref, hyp in zip(references, hypotheses)]
    pairs = [(ref, hyp) for ref, hyp in pairs if ref]
    if not pairs:
        return None, 0
    return float(jiwer.wer([ref for ref, _ in pairs], [hyp for _, hyp in pairs])), len(pairs)


# ---- the recogniser --------------------------------------------------------------------------

def model_stamp(asr, language, num_beams: int, backend: str = "auto", device=None) -> dict:
    """What identifies the transcripts: the model (a local folder by its absolute path, with a
    digest of its config), the language (as Whisper's code) and the decoding (and, for
    faster-whisper, its backend and compute type). Read from the config alone, so a model that is
    no speech recogniser is refused before its weights load."""
    if asr_backend(asr, backend) == "faster-whisper":
        return ct2_stamp(asr, language, num_beams, device)
    source = str(asr)
    local = Path(source).expanduser()
    looks_local = local.exists() or source.startswith((".", "/", "~")) or source.count("/") > 1
    if looks_local and not (local / "config.json").is_file():
        raise TranscribeError(f"{source}: not a model folder (no config.json); {LOAD_HINT}")
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise TranscribeError(f"cannot load the config of {source!r} ({err}); {LOAD_HINT}") from err
    heads = set(config.architectures or [])
    if not heads & RECOGNISER_CLASSES:
        raise TranscribeError(
            f"{source}: a {config.model_type} model with head {sorted(heads) or 'none'} is not a speech recogniser; "
            "pass one with a CTC or speech-to-text head, e.g. openai/whisper-small or facebook/wav2vec2-base-960h"
        )
    digest = hashlib.sha256(config.to_json_string(use_diff=False).encode()).hexdigest()
    generates = bool(heads & set(MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES.values()))  # CTC, transducers: no beams
    return {"model": str(local.resolve()) if looks_local else source, "config_sha256": digest,
            "language": language_code(language, source, whisper_languages(source, config), config.model_type),
            "num_beams": num_beams if generates else None}


def ct2_stamp(asr, language, num_beams: int, device=None) -> dict:
    """model_stamp of a CTranslate2 Whisper folder (config.json, model.bin, vocabulary, tokenizer.json)."""
    folder = Path(str(asr)).expanduser()
    if not (folder / CT2_MODEL).is_file():
        raise TranscribeError(f"{asr}: not a CTranslate2 Whisper folder (no {CT2_MODEL}); convert a Whisper model with "
                              "ct2-transformers-converter --model openai/whisper-small --output_dir DIR --quantization "
                              "int8, or pass --asr_backend transformers")
    config = (folder / "config.json").read_bytes() if (folder / "config.json").is_file() else b""
    digest = hashlib.sha256(config + str((folder / CT2_MODEL).stat().st_size).encode()).hexdigest()
    vocabulary = next((folder / name for name in ("vocabulary.txt", "vocabulary.json") if (folder / name).is_file()), None)
    words = len(vocabulary.read_text(encoding="utf-8").splitlines()) if vocabulary and vocabulary.suffix == ".txt" else \
        len(json.loads(vocabulary.read_text(encoding="utf-8"))) if vocabulary else WHISPER_MULTILINGUAL_VOCAB
    if words < WHISPER_MULTILINGUAL_VOCAB:
        codes = None
    else:
        from faster_whisper.tokenizer import _LANGUAGE_CODES
        codes = set(_LANGUAGE_CODES)
    code = language_code(language, str(asr), codes, "an English-only Whisper")
    cuda = device is not None and getattr(device, "type", str(device)).startswith("cuda")
    return {"model": str(folder.resolve()), "config_sha256": digest, "language": code, "num_beams": num_beams,
            "backend": "faster-whisper", "compute_type": "float16" if cuda else "int8"}


def language_code(language, source: str, codes: set[str] | None, kind: str) -> str | None:
    """`language` ("en", "English", ...) as one of the model's language `codes` (a multilingual
    Whisper's); None, with a warning naming the model's `kind`, for models that take no language
    (codes None: CTC models, English-only Whisper `*.en`)."""
    if language is None:
        return None
    if codes is None:
        log.warning("--language %s ignored: %s (%s) takes no language", language, source, kind)
        return None
    code = TO_LANGUAGE_CODE.get(language.lower(), language.lower())
    if code not in codes:
        raise TranscribeError(f"--language {language}: not a language of {source}; it takes {sorted(codes)} "
                              "(codes, or names such as english)")
    return code


def whisper_languages(source: str, config) -> set[str] | None:
    """The language codes of a multilingual Whisper (its generation config's `<|xx|>` tokens), else None."""
    if config.model_type != "whisper":
        return None
    try:
        generation = GenerationConfig.from_pretrained(source)
    except OSError:
        return None
    if not getattr(generation, "is_multilingual", False):
        return None
    return {token.strip("<|>") for token in getattr(generation, "lang_to_id", {})}


class FasterWhisper:
    """A CTranslate2 Whisper run by faster-whisper (int8 on a CPU, float16 on a GPU), decoding
    each clip as transformers' pipeline does here: greedy or beam search, no voice-activity
    filter, no conditioning on earlier text."""
    type = "faster-whisper"

    def __init__(self, folder, device, compute_type: str):
        import torch
        from faster_whisper import WhisperModel
        cuda = device.type == "cuda"
        self.model = WhisperModel(str(folder), device="cuda" if cuda else "cpu", device_index=device.index or 0,
                                  compute_type=compute_type, cpu_threads=torch.get_num_threads())
        self.feature_extractor = self.model.feature_extractor   # its sampling_rate, as a pipeline's

    def __call__(self, waves, settings: dict) -> list[str]:
        return [" ".join(segment.text.strip() for segment in self.segments(wave, settings)).strip() for wave in waves]

    def segments(self, wave, settings: dict) -> list:
        """faster-whisper's segments of one clip (their text and the tokens decoded)."""
        segments, _ = self.model.transcribe(np.asarray(wave, dtype=np.float32), beam_size=settings.get("num_beams", 1),
                                            language=settings.get("language"), task="transcribe",
                                            condition_on_previous_text=False, vad_filter=False)
        return list(segments)


def load_recogniser(asr, device, stamp: dict | None = None):
    """transformers' speech-recognition pipeline over the model, its feature extractor and
    tokenizer; or faster-whisper where the stamp says so."""
    if stamp is not None and stamp.get("backend") == "faster-whisper":
        try:
            return FasterWhisper(asr, device, stamp["compute_type"])
        except (RuntimeError, ValueError, OSError) as err:
            raise TranscribeError(f"cannot load the CTranslate2 Whisper {str(asr)!r} ({err}); {LOAD_HINT}") from err
    try:
        return pipeline("automatic-speech-recognition", model=str(asr), device=device)
    except (OSError, ValueError, KeyError) as err:
        raise TranscribeError(f"cannot load speech recogniser {str(asr)!r} ({err}); {LOAD_HINT}") from err


def generate_kwargs(recogniser, stamp: dict) -> dict:
    """Decoding settings for the models that generate: beams, and Whisper's language and task."""
    if stamp["num_beams"] is None:
        return {}
    if stamp.get("backend") == "faster-whisper":
        return {"num_beams": stamp["num_beams"], "language": stamp["language"]}
    settings = {"num_beams": stamp["num_beams"]}
    if recogniser.type == "seq2seq_whisper" and recogniser.model.generation_config.is_multilingual:
        settings["task"] = "transcribe"  # not translate
        if stamp["language"]:
            settings["language"] = stamp["language"]
    return settings


def recognise(recogniser, waves, sampling_rate: int, settings: dict, batch_size: int) -> list[str]:
    """One transcript per wave. Whisper hears 30 s windows: a longer clip is decoded alone
    (batched pipelines pad features to one length), by Whisper's sequential long-form decoding,
    which needs the timestamp tokens."""
    if isinstance(recogniser, FasterWhisper):
        return recogniser(waves, settings)
    window = getattr(recogniser.feature_extractor, "n_samples", None) if recogniser.type == "seq2seq_whisper" else None
    if window and any(len(wave) > window for wave in waves):
        return [text for wave in waves
                for text in recognise_at_once(recogniser, [wave], sampling_rate, settings, 1, len(wave) > window)]
    return recognise_at_once(recogniser, waves, sampling_rate, settings, batch_size)


def recognise_at_once(recogniser, waves, sampling_rate, settings, batch_size, long_form=False) -> list[str]:
    inputs = [{"raw": wave, "sampling_rate": sampling_rate} for wave in waves]
    options = {"generate_kwargs": settings} if settings else {}
    if long_form:
        options["return_timestamps"] = True  # the text comes back without them
    return [output["text"].strip() for output in recogniser(inputs, batch_size=batch_size, **options)]
