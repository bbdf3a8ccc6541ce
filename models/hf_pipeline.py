"""The prediction entry of a shared model folder: the "audio-classification" pipeline its
config.json registers, so that

    pipe = transformers.pipeline("audio-classification", model=FOLDER, trust_remote_code=True)
    pipe("clip.wav", transcript="I can't believe you did that!")   # [{"label": ..., "score": ...}, ...]

runs the run's model as the Python API does (inference.EmotionRecognizer): a path (what
libsndfile reads) or an array with its `sampling_rate` ([samples] or [samples, channels]; the
[channels, samples] of torchaudio is read as such, with a note) becomes 16 kHz mono (channels
averaged, resampled with soxr where installed), cut to the run's max_audio_samples,
normalised by the speech encoder's own feature extractor; mmer reads the transcript given, else
the speech recogniser recorded in the folder (bundled in its asr/, or a Hub name), else its own
CTC head's greedy transcript, and says which (a warning; `return_transcript=True` returns it
with the scores). Recordings are scored whole and one at a time, so each gets what the model
gives it alone; the Python API scores a recording over 30 s in windows instead (predict.py), so
such results differ.

A run trained with --task both or dimensional also predicts attributes (config.attributes, e.g.
arousal, valence, dominance): its answer is then {"scores": [...], "attributes": {name: value in
the corpus's units, config.attribute_range}} (return_attributes=False: the scores list alone);
under --task dimensional, whose classifier was never trained, {"attributes": {...}} alone.

Beside torch and transformers it reads audio files with soundfile (and numpy, which transformers
needs): the only imports of this package outside torch and transformers (whose huggingface_hub
fetches the bundled recogniser of a folder loaded by its Hub name)."""
import logging
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from transformers import AutoModel, AutoTokenizer, Pipeline, Wav2Vec2CTCTokenizer
from transformers import pipeline as hf_pipeline

from .encoders import min_samples_of
from .errors import MMERError
from .text import decode_ctc, embed_text, sentence_case

log = logging.getLogger(__name__)
SAMPLE_RATE = 16000
LONG_SECONDS = 30.0   # the Python API's windows start here (inference/windows.py)
RECORDED = "recorded"


class PipelineInputError(MMERError, ValueError):
    """An input the pipeline cannot score; the message says which and what to do."""


def mono_16k(samples: np.ndarray, rate: int, name: str) -> np.ndarray:
    """[samples] or [samples, channels] at `rate` -> float32 mono at 16 kHz, as training read it
    (dataio.audio.prepare_samples: channels averaged, then soxr); refused as predict.py refuses it."""
    samples = np.asarray(samples, dtype=np.float32)
    samples = samples[:, None] if samples.ndim == 1 else samples
    if samples.ndim != 2:
        raise PipelineInputError(f"{name}: expected [samples] or [samples, channels] audio, got shape {samples.shape}")
    if samples.size == 0:
        raise PipelineInputError(f"{name}: the audio holds no samples; re-export it, or drop it")
    if not np.isfinite(samples).all():
        raise PipelineInputError(f"{name}: the audio holds NaN or infinite samples (non-finite values); re-export "
                                 "it, or drop it")
    samples = samples.mean(axis=1, keepdims=True)[:, 0] if samples.shape[1] > 1 else samples[:, 0]
    if rate != SAMPLE_RATE:
        try:
            import soxr
        except ImportError as err:
            raise PipelineInputError(f"{name}: {rate} Hz audio needs resampling to {SAMPLE_RATE} Hz with soxr, as "
                                     "in training: pip install soxr, or pass 16 kHz audio") from err
        samples = soxr.resample(samples, rate, SAMPLE_RATE).astype(np.float32)
    return np.ascontiguousarray(samples, dtype=np.float32)


def samples_by_channels(array, name: str, say=log.warning) -> np.ndarray:
    """An array as [samples] or [samples, channels]. One with fewer rows than columns is read as
    torchaudio's [channels, samples], and `say` notes it: a [samples, channels] recording with more
    channels than samples would be far shorter than a speech encoder's receptive field."""
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 2 and array.shape[0] < array.shape[1]:
        say(f"{name}: shape {tuple(array.shape)} read as [channels, samples], torchaudio's layout ({array.shape[0]} "
            f"channel(s) of {array.shape[1]} samples); pass [samples, channels] to silence this")
        return array.T
    return array


def read_input(inputs, sampling_rate: int | None, say=log.warning) -> tuple[np.ndarray, str]:
    """A path, an array (with sampling_rate), or {"array"|"raw": ..., "sampling_rate": ...}."""
    if isinstance(inputs, dict):
        array = samples_by_channels(inputs.get("array", inputs.get("raw")), "array", say)
        return mono_16k(array, int(inputs["sampling_rate"]), "array"), "array"
    if isinstance(inputs, (str, Path)):
        try:
            samples, rate = sf.read(str(inputs), dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, OSError) as err:
            raise PipelineInputError(f"{inputs}: soundfile cannot read it ({err}); convert it to wav or flac, or "
                                     "use the MMER repository's predict.py, which reads video and other "
                                     "containers") from err
        return mono_16k(samples, rate, str(inputs)), str(inputs)
    if sampling_rate is None:
        raise PipelineInputError("an array needs its sampling_rate: pipe(array, sampling_rate=16000)")
    return mono_16k(samples_by_channels(inputs, "array", say), int(sampling_rate), "array"), "array"


class MMERAudioClassificationPipeline(Pipeline):
    """pipe(audio, transcript=None, sampling_rate=None, top_k=None, return_transcript=False, asr="recorded",
    return_attributes=None) -> [{"label", "score"}, ...] sorted by score (all classes unless top_k).
    asr: "recorded" (the folder's recogniser, if it bundles or names one), None (the CTC head) or a
    transformers recogniser's name. A model with attributes answers a dict (module docstring)
    unless return_attributes=False."""
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = True
    _load_tokenizer = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._text = None        # (tokenizer, encoder), loaded at mmer's first call
        self._ctc_tokenizer = None
        self._recognisers = {}
        self._said = set()

    def _sanitize_parameters(self, transcript=None, sampling_rate=None, top_k=None, return_transcript=None,
                             asr=RECORDED, return_attributes=None, **_):
        preprocess = {"transcript": transcript, "sampling_rate": sampling_rate}
        postprocess = {"top_k": top_k, "return_transcript": bool(return_transcript)}
        if return_attributes is not None:
            postprocess["return_attributes"] = bool(return_attributes)
        return preprocess, {"asr": asr}, postprocess

    # ------------------------------------------------------------ steps
    def preprocess(self, inputs, transcript=None, sampling_rate=None):
        samples, name = read_input(inputs, sampling_rate, say=lambda note: self._say_once("layout", note))
        cut = self.model.config.model_config.get("max_audio_samples")
        samples = samples[:cut] if cut else samples
        self._check_length(samples, name)
        if len(samples) > LONG_SECONDS * SAMPLE_RATE:
            self._say_once("long", "%s: %.0f s, scored whole; the Python API (predict.py) scores recordings over "
                           "%.0f s in windows", name, len(samples) / SAMPLE_RATE, LONG_SECONDS)
        features = self.feature_extractor(samples, sampling_rate=SAMPLE_RATE, return_tensors="pt")
        given = transcript if isinstance(transcript, str) and transcript.strip() else None
        return {"input_values": features["input_values"], "attention_mask": features.get("attention_mask"),
                "samples": samples, "transcript": given, "name": name}

    def _forward(self, model_inputs, asr=RECORDED):
        audio = {"input_values": model_inputs["input_values"], "attention_mask": model_inputs["attention_mask"]}
        text, source, features = model_inputs["transcript"], "given", {}
        if not self.model.uses_text:
            if text is not None:
                self._say_once("unused", "the %s model reads no text: the transcript is not used", self.model.config.variant)
            text, source = "", "none"
        else:
            if text is None:
                text, source = self._transcribe(model_inputs["samples"], audio, asr)
                what = ("the recorded speech recogniser's transcript" if source == "asr" else
                        "its own CTC head's greedy transcript (pass transcript=... for its best results)")
                self._say_once(source, "no transcript given: mmer reads %s", what)
            embedded = self._embed(text)[None]                      # [1, T_text, D_text]
            features = {"text_features": embedded, "text_lengths": torch.tensor([embedded.shape[1]], device=self.device)}
        output = self.model(**audio, **features)
        return {"probabilities": output.probabilities[0], "transcript": text, "transcript_source": source,
                "attributes": None if output.attributes is None else output.attributes[0]}

    def postprocess(self, model_outputs, top_k=None, return_transcript=False, return_attributes=True):
        config = self.model.config
        answer = {}
        if config.task != "dimensional":   # a dimensional run's classifier was never trained
            probabilities = model_outputs["probabilities"].float().cpu()
            order = torch.argsort(probabilities, descending=True)[: top_k or len(probabilities)]
            answer["scores"] = [{"label": config.id2label[int(i)], "score": float(probabilities[i])} for i in order]
        if model_outputs["attributes"] is not None and (return_attributes or config.task == "dimensional"):
            answer["attributes"] = {name: float(value) for name, value in
                                    zip(config.attributes, model_outputs["attributes"].float().cpu())}
        if return_transcript:
            answer.update(transcript=model_outputs["transcript"], transcript_source=model_outputs["transcript_source"])
        return answer["scores"] if list(answer) == ["scores"] else answer

    # ------------------------------------------------------------ mmer's text
    def _transcribe(self, samples, audio, asr) -> tuple[str, str]:
        """A missing transcript: the recogniser (recorded or named), else the first fold's CTC head."""
        recorded = self.model.config.asr or {}
        if asr == RECORDED:
            name, settings, bundled = recorded.get("model"), dict(recorded.get("generate_kwargs") or {}), \
                recorded.get("bundled")
        else:
            name, settings, bundled = asr, {}, None
        if name:
            return self._recognise(name, samples, settings, bundled), "asr"
        logits, lengths = self.model.ctc(**audio)
        return sentence_case(decode_ctc(logits, lengths, self._ctc_vocabulary())[0]), "ctc"

    def _recognise(self, name: str, samples: np.ndarray, settings: dict, bundled: str | None = None) -> str:
        """`name`: a recogniser's Hub name or path; `bundled`: the folder's subfolder holding it."""
        if name not in self._recognisers:
            try:
                source = self._subfolder(bundled) if bundled else name
                self._recognisers[name] = hf_pipeline("automatic-speech-recognition", model=source, device=self.device)
            except (OSError, ValueError) as err:
                where = f" (the folder's {bundled}/)" if bundled else ""
                raise PipelineInputError(f"cannot load the speech recogniser {name!r}{where} ({err}); pass "
                                         "transcript=..., or asr=None to read the model's own CTC transcript") from err
        recogniser = self._recognisers[name]
        window = getattr(recogniser.feature_extractor, "n_samples", None) if recogniser.type == "seq2seq_whisper" else None
        options = {"generate_kwargs": settings} if settings else {}
        if window and len(samples) > window:
            options["return_timestamps"] = True   # Whisper's long-form decoding needs them
        return recogniser({"raw": samples, "sampling_rate": SAMPLE_RATE}, **options)["text"].strip()

    def _subfolder(self, name: str) -> str:
        """The path of the folder's subfolder `name`: in the folder itself, or, for a folder loaded
        by its Hub name, in the Hub cache (the pipeline loads a recogniser from a path only)."""
        root = Path(self.model.name_or_path)
        if root.is_dir():
            return str(root / name)
        from huggingface_hub import snapshot_download
        return str(Path(snapshot_download(self.model.name_or_path, allow_patterns=[f"{name}/*"])) / name)

    def _ctc_vocabulary(self):
        if self._ctc_tokenizer is None:
            self._ctc_tokenizer = Wav2Vec2CTCTokenizer.from_pretrained(self.model.name_or_path, subfolder="ctc_tokenizer")
        return self._ctc_tokenizer

    def _embed(self, text: str) -> torch.Tensor:
        """The transcript's text features, from the text encoder the run's features came from
        (bundled in the folder's text_encoder/, else loaded by its recorded name)."""
        if self._text is None:
            entry = self.model.config.text_encoder or {}
            source, where = (self.model.name_or_path, {"subfolder": entry["bundled"]}) if entry.get("bundled") \
                else (entry.get("name"), {})
            try:
                self._text = (AutoTokenizer.from_pretrained(source, **where),
                              AutoModel.from_pretrained(source, **where).to(self.device).eval())
            except (OSError, ValueError, TypeError) as err:
                raise PipelineInputError(f"cannot load the text encoder {source!r} ({err}); export the folder with "
                                         "--include_text_encoder, or make that model available here") from err
        return embed_text(text, *self._text)

    def _check_length(self, samples: np.ndarray, name: str) -> None:
        """Shorter than the speech encoder's receptive field, a recording gives no frame to score."""
        shortest = min_samples_of(self.model.folds[0].wav2vec2.config)
        if len(samples) < shortest:
            raise PipelineInputError(f"{name}: {len(samples) / SAMPLE_RATE * 1000:.1f} ms of audio, shorter than the "
                                     f"speech encoder's receptive field ({shortest} samples, "
                                     f"{shortest / SAMPLE_RATE * 1000:.0f} ms); give a longer recording")

    def _say_once(self, key: str, message: str, *args) -> None:
        if key not in self._said:
            self._said.add(key)
            log.warning(message, *args)
