"""Emotion recognition with a trained run, from Python: load a run folder once, predict many
times. predict.py is the command line over this module.

    >>> from inference import EmotionRecognizer
    >>> recognizer = EmotionRecognizer.from_run(RUN_DIR)          # one fold's model; ensemble=True: all folds
    >>> result = recognizer.predict(AUDIO, transcript="I can't believe you did that!")
    >>> result.label in recognizer.classes
    True
    >>> round(sum(result.probabilities.values()), 6)
    1.0
    >>> result.transcript_source
    'given'

Audio is a file path or a 1-D (or [samples, channels]) array with its sample rate; it is
resampled, downmixed and normalised exactly as in training. mmer reads a transcript: the one
given, else a speech recogniser's (`asr=`, e.g. openai/whisper-small), else its own CTC head's
(greedy, in sentence case), and says which. Every result is padding-exact: a recording gets what
the model gives it alone, whatever it is batched with. A recording longer than
`recognizer.windows.long_seconds` (30 s) is scored in windows read one batch at a time (6 s,
one every 3 s): its result is the duration-weighted summary, with the timeline in `.windows`
(`timeline_table`, `plot_timeline`).

The same recognizer runs a run exported by export.py with onnxruntime instead of PyTorch
(`EmotionRecognizer.from_onnx(EXPORT_DIR)`): only the model calls differ (OnnxModel,
OnnxTextEncoder); windows, transcripts, batching and labels are this module's one path.
"""
import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from dataio.text_features import TextFeatureError, agreed_text_encoder, embed_texts, load_text_encoder, tokenize
from models import EmotionOutput, ModelConfig, model_class
from models.encoders import AudioInputSpec, audio_input_spec, min_samples_of, padding_is_exact
from dataio.audio import AudioError, audio_info, normalize, prepare_samples, read_audio, read_frames
from models.checkpoint import CheckpointError, find_checkpoints, restore_model
from dataio.dataset import Collator, EmotionDataset, ExactBatchSampler, pad_rows
from dataio.labels import LabelSet
from utils.device import autocast, check_precision, evaluation_precision, resolve_device
from utils.hub import check_model_name
from dataio.text import greedy_decode, sentence_case
from models.errors import MMERError

log = logging.getLogger("mmer.inference")
DEFAULT_ROBERTA = "roberta-base"
ONNX_MANIFEST = "manifest.json"  # export.py's
ONNX_MANIFEST_VERSIONS = (1,)


class PredictError(MMERError, ValueError):
    """Bad input to the prediction; the message names the file and the fix."""


@dataclass
class Prediction:
    """One recording's result; probabilities in the run's class order."""
    source: str                       # the file, or "array <i>"
    label: str
    probabilities: dict = field(default_factory=dict)   # class name -> probability
    transcript: str = ""              # the text mmer read ("" for audio-only models)
    transcript_source: str = "none"   # given | asr | ctc | none (audio-only model)
    ctc_transcript: str = ""          # what the model's CTC head heard (variants with a CTC head)
    windows: list | None = None       # a long recording's timeline (WindowPrediction), else None

    def as_row(self) -> dict:
        return {"file": self.source, "predicted_label": self.label,
                **{f"prob_{name}": p for name, p in self.probabilities.items()},
                "transcript": self.transcript, "transcript_source": self.transcript_source,
                "ctc_transcript": self.ctc_transcript, "windows": len(self.windows) if self.windows else 0}


@dataclass(frozen=True)
class Span:
    """A window of a long recording, in samples at 16 kHz; `own_*` is the part of the recording
    it speaks for in the timeline (the owned parts of all windows cover the recording once)."""
    start: int
    end: int
    own_start: int
    own_end: int
    rate: int = 16000

    @property
    def start_s(self) -> float:
        return self.start / self.rate

    @property
    def end_s(self) -> float:
        return self.end / self.rate


@dataclass
class WindowPrediction:
    span: Span
    prediction: Prediction


@dataclass
class Windows:
    """How long recordings are cut: recordings over `long_seconds` are scored in windows of
    `seconds`, one every `hop_seconds` (half overlapping by default), the last one ending with
    the recording; `batch` windows per pass. Each second of the recording is owned by the
    window whose centre is nearest, so the timeline covers it exactly once, and the summary
    weighs each window by the length it owns."""
    seconds: float = 6.0
    hop_seconds: float = 3.0
    long_seconds: float = 30.0
    batch: int = 8

    def spans(self, samples: int, rate: int) -> list[Span]:
        size, hop = round(self.seconds * rate), round(self.hop_seconds * rate)
        if samples <= size:
            return [Span(0, samples, 0, samples, rate)]
        starts = list(range(0, samples - size + 1, hop))
        if starts[-1] + size < samples:
            starts.append(samples - size)
        centres = [start + size / 2 for start in starts]
        bounds = [0] + [round((a + b) / 2) for a, b in zip(centres, centres[1:])] + [samples]
        return [Span(start, start + size, bounds[k], bounds[k + 1], rate) for k, start in enumerate(starts)]


class WindowSource:
    """Windows of a recording read from its file one at a time (a file's source frames around
    the window, downmixed and resampled), so memory does not grow with its length."""

    def __init__(self, path, sample_rate, rate: int):
        self.path, self.rate, self.array = str(path), rate, None
        self.info = info = audio_info(self.path)
        self.source_rate = info.samplerate
        self.samples = int(np.ceil(info.frames * rate / info.samplerate))

    @classmethod
    def of_array(cls, samples: np.ndarray) -> "WindowSource":
        source = cls.__new__(cls)
        source.array, source.samples = samples, len(samples)
        return source

    def read(self, span: Span) -> np.ndarray:
        if self.array is not None:
            return self.array[span.start:span.end]
        first = int(np.floor(span.start * self.source_rate / self.rate))
        last = int(np.ceil(span.end * self.source_rate / self.rate))
        frames, _ = read_frames(self.path, first, last, self.info)
        samples = prepare_samples(frames, self.source_rate, self.rate, self.path)
        wanted = span.end - span.start
        return np.pad(samples[:wanted], (0, max(0, wanted - len(samples))))


def summarise(name: str, timeline: list[WindowPrediction], classes: list[str]) -> Prediction:
    """The whole recording: the windows' probabilities weighed by the length each owns."""
    weights = np.array([w.span.own_end - w.span.own_start for w in timeline], dtype=float)
    probs = np.array([[w.prediction.probabilities[c] for c in classes] for w in timeline])
    mean = weights @ probs / weights.sum()
    return Prediction(source=name, label=classes[int(mean.argmax())],
                      probabilities={c: float(v) for c, v in zip(classes, mean)},
                      transcript_source=timeline[0].prediction.transcript_source, windows=timeline)


def timeline_table(prediction: Prediction) -> pd.DataFrame:
    """One row per window: its extent, the part it owns, its label and probabilities, its transcript."""
    rows = [{"window": k, "start_s": w.span.start_s, "end_s": w.span.end_s,
             "own_start_s": w.span.own_start / w.span.rate, "own_end_s": w.span.own_end / w.span.rate,
             "predicted_label": w.prediction.label,
             **{f"prob_{c}": v for c, v in w.prediction.probabilities.items()},
             "transcript": w.prediction.transcript, "transcript_source": w.prediction.transcript_source}
            for k, w in enumerate(prediction.windows or [])]
    return pd.DataFrame(rows)


def plot_timeline(prediction: Prediction, path) -> None:
    """The class probabilities over time (each window drawn over the part it owns)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from utils.files import save_figure
    table = timeline_table(prediction)
    classes = list(prediction.probabilities)
    fig, ax = plt.subplots(figsize=(10, 3.6), layout="constrained")
    for k, name in enumerate(classes):
        x = np.ravel(np.column_stack([table["own_start_s"], table["own_end_s"]]))
        y = np.repeat(table[f"prob_{name}"].to_numpy(), 2)
        ax.plot(x, y, label=name, color=f"C{k}")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("probability")
    ax.set_ylim(0, 1)
    ax.set_title(f"{Path(prediction.source).name}: {prediction.label} overall ("
                 f"{len(table)} windows)")
    ax.legend(loc="upper right", ncol=len(classes))
    save_figure(fig, path)


# ---------------------------------------------------------------- loading a run
def select_checkpoints(found: dict[str, Path], session=None, ensemble: bool = False) -> list[Path]:
    if ensemble:
        log.info("ensemble: averaging the probabilities of %d checkpoints (sessions %s)", len(found), ", ".join(found))
        return list(found.values())
    if session is None:
        session = next(iter(found))
        if len(found) > 1:
            log.warning("using session %s's model %s, the first of %d (one per fold); --session N picks another, "
                        "--ensemble averages them all", session, found[session], len(found))
    if str(session) not in found:
        first = next(iter(found.values()))
        raise CheckpointError(f"{first.parent}/{session}_model{first.suffix} not found; sessions there: "
                              f"{', '.join(found)}")
    return [found[str(session)]]


def load_models(checkpoint_dir, run=None, wav2vec2=None, session=None, ensemble=False, device="cpu") -> dict:
    """{checkpoint path: model in eval mode on `device`}: one session's model, or all with `ensemble`."""
    if wav2vec2:
        check_model_name(wav2vec2, "--wav2vec2")
    models = {}
    for path in select_checkpoints(find_checkpoints(checkpoint_dir), session, ensemble):
        model, _ = restore_model(path, run, wav2vec2)
        models[path] = model.to(device).eval()
    runs = {model.config.run for model in models.values()}
    if len(runs) > 1:
        raise CheckpointError(f"{checkpoint_dir}: the checkpoints hold different models ({', '.join(sorted(runs))}); "
                              "an ensemble averages the folds of one run, pick one with --session")
    return models


def audio_settings(models: dict) -> tuple[AudioInputSpec, bool, int]:
    """The audio preparation of the models' speech encoder, whether its padded batches are exact,
    and its shortest input in samples: from the encoder (torch) or the export's manifest (onnxruntime)."""
    first = next(iter(models.values()))
    if isinstance(first, OnnxModel):
        return first.spec, first.padding_exact, first.min_samples
    spec = shared_input_spec(models)
    return spec, padding_is_exact(first.wav2vec2.config, spec), min_samples_of(first.wav2vec2.config)


def shared_input_spec(models: dict):
    """The audio preparation of the models' speech encoder; an ensemble must agree on it."""
    specs = {audio_input_spec(path) for path in sorted({m.config.wav2vec2 for m in models.values()})}
    if len(specs) > 1:
        raise PredictError("the checkpoints' speech encoders prepare audio differently; ensemble the folds of one run")
    return specs.pop()


def recorded_roberta(checkpoint_dir, roberta: str | None = None) -> str:
    """The text encoder of the run's features, recorded in its config.json (utils.runinfo.write_config);
    a given `roberta` must be that one. Without a record: `roberta`, else roberta-base."""
    config = Path(checkpoint_dir) / "config.json"
    if not config.is_file():
        return roberta or DEFAULT_ROBERTA
    try:
        saved = json.loads(config.read_text())
        stamp = saved.get("text_encoder") or ({"roberta": saved["run"]["roberta"]} if saved["run"].get("roberta")
                                               else None)
    except (json.JSONDecodeError, AttributeError, KeyError, TypeError) as err:
        raise PredictError(f"{config}: not the config.json run.py writes ({err}); name the text encoder "
                           "with --roberta") from err
    try:
        return agreed_text_encoder(stamp, roberta, str(config), DEFAULT_ROBERTA)
    except TextFeatureError as err:
        raise PredictError(str(err)) from err


def default_batch_size(device: torch.device) -> int:
    """Up to 8 recordings per forward pass on a GPU; 1 on a CPU, where batching buys no
    parallelism (wav2vec2-base, 2 threads: 0.085 x real time alone against 0.11-0.24 in
    length-sorted batches of 8, docs/PERFORMANCE.md). Batches are padding-exact either way."""
    return 8 if device.type == "cuda" else 1


# ---------------------------------------------------------------- the recognizer
class EmotionRecognizer:
    """A run's model(s), the audio preparation of their encoder and, for mmer, the text
    encoder, loaded once. Safe to call from several threads: calls take turns (the tokenizers
    are not thread-safe, and one call already uses every CPU thread torch is given)."""

    def __init__(self, models: dict, roberta: str = DEFAULT_ROBERTA, device="cpu", precision: str = "fp32",
                 batch_size: int | None = None, asr: str | None = None, language: str | None = None,
                 text_encoder=None, embed_text: bool = True, asr_backend: str = "auto"):
        """models: {path: torch model (load_models) or OnnxModel (load_onnx_models)}; text_encoder:
        a callable texts -> [T, H] arrays (default, for mmer: `roberta` in torch). embed_text=False:
        no text encoder is loaded; mmer then reads only the text features passed to predict_many."""
        self.models = models
        self.device = torch.device(device)
        self.precision = precision
        self.batch_size = batch_size or default_batch_size(self.device)
        self.first = next(iter(models.values()))
        self.spec, self.exact, self.min_samples = audio_settings(models)
        self.roberta = roberta
        if text_encoder is None and self.first.uses_text and embed_text:
            text_encoder = self._text_encoder()
        self.text_encoder = text_encoder
        self.asr = Recogniser(asr, language, self.device, asr_backend) if asr and self.first.uses_text else None
        self.windows = Windows()
        self._turn = threading.RLock()
        if asr and not self.first.uses_text:
            log.warning("the %s model reads no text: --asr %s is not used", self.run, asr)

    @classmethod
    def from_run(cls, checkpoint_dir, session=None, ensemble: bool = False, run=None, wav2vec2=None, roberta=None,
                 device="auto", precision: str = "auto", batch_size: int | None = None, asr: str | None = None,
                 language: str | None = None, embed_text: bool = True, asr_backend: str = "auto") -> "EmotionRecognizer":
        """Load `<checkpoint_dir>/<session>_model.pt` (default: the first fold's), or all folds'
        with `ensemble`; settings not given come from the checkpoints and the run's config.json.
        asr: a transformers speech recogniser (e.g. openai/whisper-small) for mmer's missing
        transcripts, instead of the model's own CTC head."""
        try:
            device = resolve_device(str(device))
        except ValueError as err:
            raise PredictError(str(err)) from err
        check_precision(device, precision)
        models = load_models(checkpoint_dir, run, wav2vec2, session, ensemble, device)
        roberta = recorded_roberta(checkpoint_dir, roberta)
        return cls(models, roberta, device, precision, batch_size, asr, language, embed_text=embed_text,
                   asr_backend=asr_backend)

    @classmethod
    def from_onnx(cls, onnx_dir, session=None, ensemble: bool = False, roberta=None, batch_size: int | None = None,
                  asr: str | None = None, language: str | None = None, threads: int | None = None
                  ) -> "EmotionRecognizer":
        """A run exported by export.py, run by onnxruntime on the CPU: `<onnx_dir>/<session>_model.onnx`
        (default: the first fold's) or all folds' with `ensemble`, and for mmer the exported text
        encoder. No torch model is built (torch still batches the inputs; `asr` runs in torch).
        threads: onnxruntime's intra-op threads (default: torch's, so both backends compare)."""
        manifest = read_manifest(onnx_dir)
        models = load_onnx_models(onnx_dir, manifest, session, ensemble, threads)
        text_encoder = None
        entry = manifest["text_encoder"]
        if entry is not None:
            try:
                roberta = agreed_text_encoder(entry["stamp"], roberta, str(Path(onnx_dir) / ONNX_MANIFEST))
            except TextFeatureError as err:
                raise PredictError(str(err)) from err
            text_encoder = OnnxTextEncoder(onnx_dir, entry, threads)
        return cls(models, roberta or DEFAULT_ROBERTA, "cpu", "fp32", batch_size, asr, language, text_encoder)

    @property
    def classes(self) -> list[str]:
        """The run's classes, in the order of its probabilities."""
        return list(LabelSet.from_dict(self.first.config.labels).classes)

    @property
    def label_set(self):
        return LabelSet.from_dict(self.first.config.labels)

    @property
    def run(self) -> str:
        return self.first.config.run

    @property
    def sample_rate(self) -> int:
        return self.spec.sampling_rate

    def _text_encoder(self):
        """RoBERTa for mmer's text (texts -> [T, H] arrays), loaded before any audio work so a
        wrong one fails at once."""
        try:
            tokenizer, encoder = load_text_encoder(self.roberta, self.device)
        except TextFeatureError as err:
            raise PredictError(str(err)) from err
        if encoder.config.hidden_size != self.first.config.text_dim:
            raise PredictError(f"{self.roberta}: gives {encoder.config.hidden_size}-dim features but the checkpoint "
                               f"reads {self.first.config.text_dim}-dim ones; pass --roberta the text encoder the "
                               "run was trained with")
        return lambda texts: embed_texts(texts, tokenizer, encoder, batch_size=len(texts))

    # ------------------------------------------------------------ inputs
    def prepare(self, audio, sample_rate: int | None = None, name: str = "array") -> np.ndarray:
        """An array (with its sample rate) -> 16 kHz mono samples (not yet normalised)."""
        if sample_rate is None:
            raise PredictError(f"{name}: an array needs its sample_rate")
        return self.checked(prepare_samples(np.asarray(audio, dtype=np.float32), sample_rate, self.sample_rate, name),
                            name)

    def checked(self, samples: np.ndarray, name: str) -> np.ndarray:
        if len(samples) < self.min_samples:
            raise PredictError(f"{name}: {len(samples) / self.sample_rate * 1000:.1f} ms of audio, shorter than the "
                               f"speech encoder's receptive field ({self.min_samples} samples, "
                               f"{self.min_samples / self.sample_rate * 1000:.0f} ms); give a longer recording")
        return samples

    def seconds(self, audio, sample_rate: int | None = None) -> float:
        """A recording's duration, from its header (a path) or its length (an array)."""
        if isinstance(audio, (str, Path)):
            return audio_info(audio).duration
        return len(audio) / (sample_rate or self.sample_rate)

    # ------------------------------------------------------------ prediction
    def predict(self, audio, transcript: str | None = None, sample_rate: int | None = None) -> Prediction:
        """One recording (a path, or an array with its sample rate)."""
        return self.predict_many([audio], [transcript], [sample_rate])[0]

    def predict_many(self, audios, transcripts=None, sample_rates=None, progress: bool = False,
                     text_features=None) -> list[Prediction]:
        """Many recordings; transcripts and sample rates per recording (None where not given).
        text_features: mmer's text features per recording ([T, H] arrays, e.g. the .npy files
        run.py reads; None where not given), used instead of embedding a transcript.
        A recording longer than `windows.long_seconds` is scored in windows (see Windows): its
        Prediction is the duration-weighted summary and carries the per-window timeline."""
        n = len(audios)
        transcripts = list(transcripts) if transcripts is not None else [None] * n
        text_features = list(text_features) if text_features is not None else [None] * n
        sample_rates = list(sample_rates) if sample_rates is not None else [None] * n
        names = [str(a) if isinstance(a, (str, Path)) else f"array {i}" for i, a in enumerate(audios)]
        long = [self.seconds(a, sr) > self.windows.long_seconds for a, sr in zip(audios, sample_rates)]
        results = [None] * n
        for i in (i for i in range(n) if long[i]):
            if text_features[i] is not None:
                log.warning("%s: text features of the whole recording cannot be split over its windows; each window "
                            "is transcribed", names[i])
            results[i] = self.predict_windows(audios[i], transcripts[i], sample_rates[i], names[i])
        short = [i for i in range(n) if not long[i]]
        if short:
            samples = [read_audio(audios[i], self.sample_rate) if isinstance(audios[i], (str, Path))
                       else self.prepare(audios[i], sample_rates[i], names[i]) for i in short]
            scored = self._score([self.checked(s, names[i]) for s, i in zip(samples, short)],
                                 [transcripts[i] for i in short], progress, [text_features[i] for i in short])
            for i, result in zip(short, self._predictions(scored, [names[i] for i in short])):
                results[i] = result
        return results

    def predict_windows(self, audio, transcript=None, sample_rate=None, name=None) -> Prediction:
        """A recording of any length, scored in windows (Windows) read one batch at a time, so
        memory and time per second do not grow with its length: -> the summary Prediction, with
        `.windows` the timeline."""
        name = name or (str(audio) if isinstance(audio, (str, Path)) else "array")
        if transcript:
            log.warning("%s: a transcript of the whole recording cannot be split over its windows; each window "
                        "is transcribed (%s)", name, "ASR" if self.asr else "the model's CTC head")
        source = WindowSource(audio, sample_rate, self.sample_rate) if isinstance(audio, (str, Path)) else \
            WindowSource.of_array(self.prepare(audio, sample_rate, name))
        spans = self.windows.spans(source.samples, self.sample_rate)
        timeline = []
        for start in range(0, len(spans), self.windows.batch):
            chunk = spans[start:start + self.windows.batch]
            scored = self._score([source.read(s) for s in chunk], [None] * len(chunk), progress=False)
            for span, result in zip(chunk, self._predictions(scored, [f"{name} [{span.start_s:.2f}-{span.end_s:.2f} s]"
                                                                      for span in chunk])):
                timeline.append(WindowPrediction(span, result))
        return summarise(name, timeline, self.classes)

    def _predictions(self, scored, names) -> list[Prediction]:
        probs, texts, sources, heard = scored
        return [Prediction(source=name, label=self.classes[int(p.argmax())],
                           probabilities={c: float(v) for c, v in zip(self.classes, p)},
                           transcript=texts[i] or "", transcript_source=sources[i] if self.first.uses_text else "none",
                           ctc_transcript=heard[i] if heard else "")
                for i, (name, p) in enumerate(zip(names, probs))]

    def _score(self, samples: list, transcripts: list, progress: bool, text_features=None):
        """16 kHz recordings -> (probabilities [N, classes] averaged over the models, the texts
        mmer read, their sources, the first model's CTC transcripts)."""
        with self._turn:
            return self._score_now(samples, transcripts, progress, text_features or [None] * len(samples))

    def _score_now(self, samples: list, transcripts: list, progress: bool, text_features: list):
        samples = [s[: self.first.config.max_audio_samples] for s in samples]  # the 2023 cut, if the run had one
        waves = [normalize(s) for s in samples] if self.spec.do_normalize else samples
        given = [t if isinstance(t, str) and t.strip() else None for t in transcripts]
        if not self.first.uses_text and any(t is not None for t in given):
            log.warning("the %s model reads no text: the transcripts given are not used", self.run)
        texts, sources = list(given), ["given" if t is not None else "ctc" for t in given]
        for i, array in enumerate(text_features):
            if array is not None:
                texts[i], sources[i] = texts[i] or "", "features"
        missing = [i for i, t in enumerate(texts) if t is None]
        unembedded = sum(f is None for f in text_features)
        if self.first.uses_text and self.text_encoder is None and unembedded:
            raise PredictError(f"{unembedded} recording(s) have no text features, and no text encoder was loaded "
                               "(embed_text=False); pass their features, or load the recognizer with a text encoder")
        if self.first.uses_text and missing and self.asr is not None:
            for i, text in zip(missing, self.asr([samples[i] for i in missing], self.sample_rate)):
                texts[i], sources[i] = text, "asr"
        elif self.first.uses_text and missing:
            self._check_ctc_trained(len(missing))
        features = [None if f is None else np.asarray(f, dtype=np.float32) for f in text_features]
        outputs = [self._run_model(model, waves, texts, features, progress) for model in self.models.values()]
        return np.mean([p for p, _ in outputs], axis=0), texts, sources, outputs[0][1]

    def _check_ctc_trained(self, missing: int) -> None:
        """A model trained with --alpha 0 has a CTC head no loss trained: its transcripts are noise."""
        if not self.first.config.alpha:
            raise PredictError(f"{missing} recording(s) have no transcript, and this model was trained with alpha 0, "
                               "so its CTC head is untrained and cannot transcribe them; pass --transcript, or a csv "
                               "with a transcript column")

    @torch.inference_mode()
    def _run_model(self, model, waves, texts, features, progress: bool):
        """One model over all recordings: the audio is encoded once per recording; for mmer, a
        missing transcript comes from this model's CTC head in the same pass (filling `texts`
        and `features` for the models after it). -> probabilities [N, classes], CTC transcripts."""
        probs = np.zeros((len(waves), len(self.classes)))
        heard = [""] * len(waves) if model.has_ctc else None
        dataset = EmotionDataset(range(len(waves)), waves)
        sampler = ExactBatchSampler(dataset.lengths(), self.batch_size, self.exact)
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=Collator(self.spec))
        for batch in tqdm(loader, desc="predict", disable=not progress, leave=False):
            rows = batch.names
            batch = batch.to(self.device)
            with autocast(self.device, evaluation_precision(self.precision)):
                audio = model.encode_audio(batch.input_values, batch.sample_lengths, batch.attention_mask)
                if heard is not None:
                    for row, text in zip(rows, decode_ctc(model.ctc_head(audio), audio.lengths)):
                        heard[row] = text
                text, lengths = self._text_features(rows, texts, features, heard) if model.uses_text else (None, None)
                output = model.classify(audio, text, lengths)
            probs[rows] = torch.softmax(output.logits.float(), dim=-1).cpu().numpy()
        return probs, heard

    def _text_features(self, rows, texts, features, heard):
        """The batch's RoBERTa features, embedding the transcripts not embedded yet (a missing
        transcript: this model's CTC transcript, in sentence case)."""
        todo = [row for row in rows if features[row] is None]
        for row in todo:
            if texts[row] is None:
                texts[row] = sentence_case(heard[row])
        if todo:
            embedded = self.text_encoder([texts[row] for row in todo])
            for row, array in zip(todo, embedded):
                features[row] = array
        text, lengths = pad_rows([torch.from_numpy(features[row]) for row in rows])
        return text.to(self.device), lengths.to(self.device)


class Recogniser:
    """A speech recogniser, transformers' or faster-whisper's (data_prep/transcribe.py's loading and decoding), that
    transcribes 16 kHz recordings for mmer, where no transcript is given."""

    def __init__(self, asr: str, language: str | None, device, backend: str = "auto"):
        from dataio.asr import TranscribeError, generate_kwargs, load_recogniser, model_stamp
        try:
            stamp = model_stamp(asr, language, num_beams=1, backend=backend, device=device)
            self.pipeline = load_recogniser(asr, device, stamp)
        except TranscribeError as err:
            raise PredictError(str(err)) from err
        self.settings = generate_kwargs(self.pipeline, stamp)
        self.name = stamp["model"]

    def __call__(self, samples: list, sample_rate: int) -> list[str]:
        from dataio.asr import recognise
        log.info("transcribing %d recording(s) with %s", len(samples), self.name)
        return recognise(self.pipeline, samples, sample_rate, self.settings, batch_size=8)


# ---------------------------------------------------------------- onnxruntime backend
def read_manifest(onnx_dir) -> dict:
    """export.py's manifest.json of `onnx_dir`, checked enough that what follows can trust it."""
    folder = Path(onnx_dir)
    path = folder / ONNX_MANIFEST
    fix = "write one with python export.py RUN_DIR --format onnx --out DIR"
    if not folder.is_dir():
        raise PredictError(f"{folder}: ONNX export folder not found; {fix}")
    if not path.is_file():
        raise PredictError(f"{path}: not found, so {folder} is no finished export; {fix}")
    try:
        manifest = json.loads(path.read_text())
        version, run, folds = manifest["manifest_version"], manifest["run"], manifest["folds"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise PredictError(f"{path}: not the manifest export.py writes ({err!r}); {fix}") from err
    if version not in ONNX_MANIFEST_VERSIONS:
        raise PredictError(f"{path}: manifest version {version}, this code reads {ONNX_MANIFEST_VERSIONS}; re-export")
    if model_class(run).uses_text and not manifest.get("text_encoder"):
        raise PredictError(f"{path}: an {run} export without its text encoder; re-export it with export.py")
    missing = [folder / f[key] for f in folds.values() for key in ("model", "fusion") if key in f
               and not (folder / f[key]).is_file()]
    if missing:
        raise PredictError(f"{', '.join(map(str, missing))}: listed in {path} but missing; re-export, or copy the "
                           "whole folder")
    return manifest


def load_onnx_models(onnx_dir, manifest: dict, session=None, ensemble: bool = False, threads=None) -> dict:
    """{path of <fold>_model.onnx: OnnxModel}: one fold's, or all with `ensemble` (as load_models)."""
    folder = Path(onnx_dir)
    found = {fold: folder / entry["model"] for fold, entry in manifest["folds"].items()}
    chosen = select_checkpoints(found, session, ensemble)
    return {path: OnnxModel(folder, manifest, fold, threads) for fold, path in found.items() if path in chosen}


def onnx_session(path: Path, threads: int | None):
    """An onnxruntime CPU session with `threads` intra-op threads (default: torch's)."""
    import onnxruntime  # only this backend needs it

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # warnings about unused initializers and the like say nothing to a user
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph/... types, none exported as a base
        raise PredictError(f"{path}: onnxruntime cannot load it ({str(err).splitlines()[0]}); re-export the run, "
                           "or install the onnxruntime version of requirements.txt") from err


@dataclass
class OnnxAudio:
    """A batch's audio after the model graph: `frames` holds the graph's outputs by name (what
    the torch model's audio frames are to _run_model's steps), `lengths` the valid frame counts."""
    frames: dict
    lengths: torch.Tensor


class OnnxModel:
    """One fold of an export.py export, run by onnxruntime, with the steps of a torch model that
    EmotionRecognizer._run_model calls: encode_audio runs `<fold>_model.onnx` (probabilities,
    CTC logits, frame lengths and, for mmer, the audio frames; mmer's text is not known yet, so a
    one-token zero text stands in, whose result is not used); ctc_head reads its CTC logits;
    classify returns its logits, or for mmer runs `<fold>_fusion.onnx` on the audio frames and
    the text features."""

    def __init__(self, folder: Path, manifest: dict, fold: str, threads: int | None = None):
        entry = manifest["folds"][fold]
        self.config = ModelConfig(**{k: v for k, v in entry["model_config"].items()
                                     if k in ModelConfig.__dataclass_fields__})
        variant = model_class(self.config.run)
        self.uses_text, self.has_ctc = variant.uses_text, variant.has_ctc
        audio = manifest["audio"]
        self.spec = AudioInputSpec(manifest["sample_rate"], manifest["normalisation"]["per_recording"],
                                   audio["padding_value"], audio["attention_mask"])
        self.padding_exact, self.min_samples = audio["padding_exact"], audio["min_samples"]
        self.graph = onnx_session(folder / entry["model"], threads)
        self.fusion = onnx_session(folder / entry["fusion"], threads) if self.uses_text else None
        self.outputs = [o.name for o in self.graph.get_outputs()]
        self.name = folder / entry["model"]

    def encode_audio(self, input_values, sample_lengths, attention_mask=None) -> OnnxAudio:
        feeds = {"input_values": input_values.numpy()}
        if self.spec.return_attention_mask:
            feeds["attention_mask"] = attention_mask.numpy().astype(np.int64)
        elif bool((sample_lengths != input_values.shape[1]).any()):
            raise PredictError(f"{self.name}: its encoder takes no attention mask, so only recordings of equal length "
                               "may share a batch (ExactBatchSampler); this one was padded")
        if self.uses_text:
            feeds["text_features"] = np.zeros((len(input_values), 1, self.config.text_dim), np.float32)
            feeds["text_lengths"] = np.ones(len(input_values), np.int64)
        frames = dict(zip(self.outputs, self.graph.run(self.outputs, feeds)))
        return OnnxAudio(frames, torch.from_numpy(frames["frame_lengths"]))

    def ctc_head(self, audio: OnnxAudio):
        return torch.from_numpy(audio.frames["ctc_logits"]) if self.has_ctc else None

    def classify(self, audio: OnnxAudio, text=None, text_lengths=None) -> EmotionOutput:
        logits = audio.frames["logits"]
        if self.uses_text:
            if text is None or text_lengths is None:
                raise ValueError("mmer needs the transcript's text features (text, text_lengths)")
            logits = self.fusion.run(["logits"], {
                "audio_frames": audio.frames["audio_frames"], "frame_lengths": audio.frames["frame_lengths"],
                "text_features": text.numpy().astype(np.float32), "text_lengths": text_lengths.numpy()})[0]
        return EmotionOutput(logits=torch.from_numpy(logits), frame_lengths=audio.lengths,
                             ctc_logits=self.ctc_head(audio))


class OnnxTextEncoder:
    """The run's text encoder as export.py exported it (text_encoder.onnx, its tokenizer and
    config in text_encoder_tokenizer/), run by onnxruntime: texts -> one [T, H] float32 array
    each, tokenized (and truncated, with a warning) as data_prep/extract_roberta.py does."""

    def __init__(self, onnx_dir, entry: dict, threads: int | None = None):
        from transformers import AutoConfig, AutoTokenizer

        folder = Path(onnx_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(folder / entry["tokenizer"])
        self.config = AutoConfig.from_pretrained(folder / entry["tokenizer"])  # tokenize() reads the token limit here
        self.session = onnx_session(folder / entry["file"], threads)

    def __call__(self, texts: list[str]) -> list[np.ndarray]:
        token_ids = tokenize(list(texts), self.tokenizer, self)
        batch = self.tokenizer.pad({"input_ids": token_ids}, return_tensors="np")
        feeds = {name: batch[name].astype(np.int64) for name in ("input_ids", "attention_mask")}
        hidden = self.session.run(["last_hidden_state"], feeds)[0]
        return [hidden[row, :len(ids)] for row, ids in enumerate(token_ids)]


def decode_ctc(ctc_logits: torch.Tensor, frame_lengths: torch.Tensor) -> list[str]:
    """Greedy CTC: argmax per valid frame, then utils.text.greedy_decode."""
    ids = ctc_logits.argmax(dim=-1).cpu()
    return [greedy_decode(row[:n].tolist()) for row, n in zip(ids, frame_lengths.tolist())]


def predictions_table(predictions: list[Prediction]) -> pd.DataFrame:
    return pd.DataFrame([p.as_row() for p in predictions])


__all__ = ["EmotionRecognizer", "Prediction", "PredictError", "AudioError", "CheckpointError", "OnnxModel"]
