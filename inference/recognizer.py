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
(greedy, in sentence case), and says which; a recording whose transcript came out empty is
said once, by name, with the fix. Every recording is checked before any compute
(`audio_problems`; UnusableInputs names all that cannot be scored). Every result is
padding-exact: a recording gets what the model gives it alone, whatever it is batched with. A
recording longer than `recognizer.windows.long_seconds` (30 s) is scored in windows read one
batch at a time (6 s, one every 3 s): its result is the duration-weighted summary, with the
timeline in `.windows` (`timeline_table`, `plot_timeline`).

A model trained with --task dimensional or both also predicts attributes (e.g. arousal, valence,
dominance): `result.attributes` holds them in the corpus's units (the rating scale the run
recorded, `recognizer.attribute_range`), as run.py's pred_<attribute> columns; an ensemble
averages them over the folds. Under --task dimensional the classifier was never trained, so
`result.label` is None and `result.probabilities` empty (`recognizer.predicts_classes`).

The same recognizer runs a run exported by export.py with onnxruntime instead of PyTorch
(`EmotionRecognizer.from_onnx(EXPORT_DIR)`): only the model calls differ (OnnxModel,
OnnxTextEncoder); windows, transcripts, batching and labels are this module's one path.
"""
import contextlib
import logging
import threading
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from dataio.audio import AudioError, audio_info, normalize, prepare_samples, read_audio
from dataio.dataset import Collator, EmotionDataset, ExactBatchSampler, pad_rows
from dataio.labels import LabelSet
from models.text import sentence_case
from dataio.text_features import TextFeatureError, agreed_text_encoder, embed_texts, load_text_encoder
from inference.onnx_runtime import ONNX_MANIFEST, OnnxModel, OnnxTextEncoder, load_onnx_models, read_manifest
from inference.prediction import Prediction, PredictError, predictions_table
from inference.runs import DEFAULT_ROBERTA, default_batch_size, load_folder, load_models, recorded_roberta
from inference.transcripts import Recogniser, decode_ctc, empty_transcript_note
from inference.windows import WindowPrediction, Windows, WindowSource, summarise
from models.checkpoint import CheckpointError, scaled_probabilities
from models.dimensional import denormalise_attributes
from models.encoders import AudioInputSpec, audio_input_spec, min_samples_of, padding_is_exact
from utils.device import autocast, check_precision, evaluation_precision, resolve_device

log = logging.getLogger("mmer.inference")


class UnusableInputs(PredictError):
    """Inputs that cannot be predicted, all named at once, found before any compute; `problems`
    holds one message per problem, each naming its input, what is wrong and the fix."""

    def __init__(self, problems: list[str], fix: str = "", most: int = 20):
        self.problems = list(problems)
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            listed = self.problems[:most] + ([f"... ({len(self.problems) - most} more)"]
                                             if len(self.problems) > most else [])
            message = f"{len(self.problems)} problems, nothing predicted:\n  " + "\n  ".join(listed)
        super().__init__(message + (f"\n{fix}" if fix else ""))


class _EmptyTextSaidOncePerRecording(logging.Filter):
    """The text encoder warns about an empty text at every call, without a name: once per window
    of a long recording. The recognizer names each such recording once instead
    (empty_transcript_note), so the encoder's own warning is held back while it embeds."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("empty transcript")


@contextlib.contextmanager
def _empty_text_said_by_the_recognizer():
    logger, quiet = logging.getLogger("dataio.text_features"), _EmptyTextSaidOncePerRecording()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


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


def attribute_settings(models: dict) -> tuple[list[str] | None, list[float] | None]:
    """The attributes the models predict (names in their head's order) and the corpus's rating
    scale [low, high] they are reported on; (None, None) for models without an attribute head.
    An ensemble must agree on both: its folds' values are averaged name by name."""
    settings = {(tuple(m.config.attributes or ()), tuple(m.config.attribute_range or ()))
                if m.config.task != "categorical" else None for m in models.values()}
    if len(settings) > 1:
        raise PredictError("the checkpoints predict different attributes or on different scales "
                           f"({sorted(map(str, settings))}); ensemble the folds of one run, or pick one with --session")
    names, scale = settings.pop() or (None, None)
    if names is not None and (not names or len(scale) != 2):
        raise PredictError(f"{next(iter(models))}: a model with an attribute head that records no attribute names or "
                           "no rating scale (attributes, attribute_range); retrain it with this code's run.py")
    return (list(names), list(scale)) if names is not None else (None, None)


def checked_device(device, precision: str) -> torch.device:
    """The device a flag names, refused (PredictError) where it or the precision cannot run."""
    try:
        device = resolve_device(str(device))
    except ValueError as err:
        raise PredictError(str(err)) from err
    check_precision(device, precision)
    return device


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
        self.attributes, self.attribute_range = attribute_settings(models)
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
        device = checked_device(device, precision)
        models = load_models(checkpoint_dir, run, wav2vec2, session, ensemble, device)
        roberta = recorded_roberta(checkpoint_dir, roberta)
        return cls(models, roberta, device, precision, batch_size, asr, language, embed_text=embed_text,
                   asr_backend=asr_backend)

    @classmethod
    def from_pretrained(cls, folder, roberta=None, device="auto", precision: str = "auto",
                        batch_size: int | None = None, asr: str | None = None, language: str | None = None,
                        asr_backend: str = "auto", embed_text: bool = True) -> "EmotionRecognizer":
        """A shared model folder (export.py --format hf; what the Hub holds once downloaded): its
        fold(s), an ensemble's averaged, with the text encoder it bundles or names and, for mmer's
        missing transcripts, the speech recogniser it bundles or names (`asr` overrides it)."""
        device = checked_device(device, precision)
        models, config = load_folder(folder, device)
        entry = config.text_encoder or {}
        bundled = str(Path(folder) / entry["bundled"]) if entry.get("bundled") else entry.get("name")
        recorded = config.asr or {}
        recogniser = str(Path(folder) / recorded["bundled"]) if recorded.get("bundled") else recorded.get("model")
        return cls(models, roberta or bundled or DEFAULT_ROBERTA, device, precision, batch_size,
                   asr or recogniser, language or recorded.get("language"), embed_text=embed_text,
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
    def predicts_classes(self) -> bool:
        """False for a model trained with --task dimensional: its classifier was never trained."""
        return self.first.config.task != "dimensional"

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
        problem = self._length_problem(len(samples), name)
        if problem:
            raise PredictError(problem)
        return samples

    def _length_problem(self, samples: int, name: str) -> str | None:
        """samples: the recording's length at the model's rate."""
        if samples == 0:
            return f"{name}: the audio holds no samples; re-export it, or drop it"
        if samples < self.min_samples:
            return (f"{name}: {samples / self.sample_rate * 1000:.1f} ms of audio, shorter than the speech "
                    f"encoder's receptive field ({self.min_samples} samples, "
                    f"{self.min_samples / self.sample_rate * 1000:.0f} ms); give a longer recording")
        return None

    def audio_problems(self, audios, sample_rates=None, names=None) -> dict[int, str]:
        """What keeps each recording from being scored, {index: its name, what is wrong and the
        fix}, from file headers and array lengths alone, before any compute: a file missing,
        unreadable or without samples, an array without its sample rate, a recording shorter
        than the speech encoder's receptive field (its length at the model's rate estimated from
        the header, as the resampler gives it to within a sample)."""
        sample_rates = list(sample_rates) if sample_rates is not None else [None] * len(audios)
        names = list(names) if names is not None else default_names(audios)
        problems = {}
        for i, (audio, rate, name) in enumerate(zip(audios, sample_rates, names)):
            if isinstance(audio, (str, Path)):
                try:
                    info = audio_info(audio)
                except AudioError as err:
                    problems[i] = str(err)
                    continue
                frames, rate = info.frames, info.samplerate
            elif rate is None:
                problems[i] = f"{name}: an array needs its sample_rate"
                continue
            else:
                frames = np.shape(audio)[0] if np.ndim(audio) else 0
            problem = self._length_problem(round(frames * self.sample_rate / rate), name)
            if problem:
                problems[i] = problem
        return problems

    def seconds(self, audio, sample_rate: int | None = None) -> float:
        """A recording's duration, from its header (a path) or its length (an array)."""
        if isinstance(audio, (str, Path)):
            return audio_info(audio).duration
        return len(audio) / (sample_rate or self.sample_rate)

    # ------------------------------------------------------------ prediction
    def predict(self, audio, transcript: str | None = None, sample_rate: int | None = None,
                name: str | None = None) -> Prediction:
        """One recording (a path, or an array with its sample rate; `name` names it in messages)."""
        return self.predict_many([audio], [transcript], [sample_rate], names=None if name is None else [name])[0]

    def predict_many(self, audios, transcripts=None, sample_rates=None, progress: bool = False,
                     text_features=None, names=None) -> list[Prediction]:
        """Many recordings; transcripts and sample rates per recording (None where not given).
        text_features: mmer's text features per recording ([T, H] arrays, e.g. the .npy files
        run.py reads; None where not given), used instead of embedding a transcript. names: what
        messages call them (default: a file's path, `array <i>`).
        Every recording is checked (audio_problems) and the short ones read before any compute:
        UnusableInputs names every one that cannot be scored. A recording longer than
        `windows.long_seconds` is scored in windows (see Windows): its Prediction is the
        duration-weighted summary and carries the per-window timeline. A recording whose
        transcript came out empty is said once (empty_transcript_note)."""
        n = len(audios)
        transcripts = list(transcripts) if transcripts is not None else [None] * n
        text_features = list(text_features) if text_features is not None else [None] * n
        sample_rates = list(sample_rates) if sample_rates is not None else [None] * n
        names = list(names) if names is not None else default_names(audios)
        problems = self.audio_problems(audios, sample_rates, names)
        if problems:
            raise UnusableInputs([problems[i] for i in sorted(problems)])
        long = [self.seconds(a, sr) > self.windows.long_seconds for a, sr in zip(audios, sample_rates)]
        short = [i for i in range(n) if not long[i]]
        samples = self._read(audios, sample_rates, names, short)
        results = [None] * n
        for i in (i for i in range(n) if long[i]):
            if text_features[i] is not None:
                log.warning("%s: text features of the whole recording cannot be split over its windows; each window "
                            "is transcribed", names[i])
            results[i] = self.predict_windows(audios[i], transcripts[i], sample_rates[i], names[i])
        if short:
            scored = self._score(samples, [transcripts[i] for i in short], progress, [text_features[i] for i in short])
            for i, result in zip(short, self._predictions(scored, [names[i] for i in short])):
                self._say_empty_transcript(result)
                results[i] = result
        return results

    def _read(self, audios, sample_rates, names, indices) -> list[np.ndarray]:
        """The recordings at `indices`, as 16 kHz samples; every one that cannot be read is named at once."""
        samples, problems = [], []
        for i in indices:
            try:
                read = read_audio(audios[i], self.sample_rate) if isinstance(audios[i], (str, Path)) \
                    else self.prepare(audios[i], sample_rates[i], names[i])
                samples.append(self.checked(read, names[i]))
            except (AudioError, PredictError) as err:
                problems.append(str(err))
        if problems:
            raise UnusableInputs(problems)
        return samples

    @staticmethod
    def _say_empty_transcript(prediction: Prediction) -> None:
        note = empty_transcript_note(prediction)
        if note:
            log.warning(note)

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
        summary = summarise(name, timeline, self.classes)
        self._say_empty_transcript(summary)
        return summary

    def _predictions(self, scored, names) -> list[Prediction]:
        probs, texts, sources, heard, attributes = scored
        classes = self.predicts_classes
        return [Prediction(source=name, label=self.classes[int(p.argmax())] if classes else None,
                           probabilities={c: float(v) for c, v in zip(self.classes, p)} if classes else {},
                           transcript=texts[i] or "", transcript_source=sources[i] if self.first.uses_text else "none",
                           ctc_transcript=heard[i] if heard else "",
                           attributes=None if attributes is None else
                           {a: float(v) for a, v in zip(self.attributes, attributes[i])})
                for i, (name, p) in enumerate(zip(names, probs))]

    def _score(self, samples: list, transcripts: list, progress: bool, text_features=None):
        """16 kHz recordings -> (probabilities [N, classes] averaged over the models, the texts
        mmer read, their sources, the first model's CTC transcripts, the attributes [N, A] in the
        corpus's units averaged over the models, None without an attribute head)."""
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
        attributes = np.mean([a for _, _, a in outputs], axis=0) if self.attributes else None
        return np.mean([p for p, _, _ in outputs], axis=0), texts, sources, outputs[0][1], attributes

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
        and `features` for the models after it). -> probabilities [N, classes] (softmax(logits / T)
        with the temperature its checkpoint or export stores, 1 if none), CTC transcripts, and the
        attributes [N, A] in the corpus's units (None without an attribute head)."""
        probs = np.zeros((len(waves), len(self.classes)))
        attributes = np.zeros((len(waves), len(self.attributes))) if self.attributes else None
        temperature = getattr(model, "calibration_temperature", 1.0)
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
            probs[rows] = scaled_probabilities(output.logits, temperature).cpu().numpy()
            if attributes is not None:
                attributes[rows] = self._attributes(model, output)
        return probs, heard, attributes

    def _attributes(self, model, output) -> np.ndarray:
        """The batch's attributes [B, A] in the corpus's units: the attribute head reads the
        embedding the classifier read (as forward does; an export's graph gives them itself), on
        the normalised scale, mapped back by the model's recorded scale."""
        normalised = output.attributes if output.attributes is not None else model.attribute_head(output.embedding)
        return denormalise_attributes(normalised.float().cpu().numpy(), *model.config.attribute_range)

    def _text_features(self, rows, texts, features, heard):
        """The batch's RoBERTa features, embedding the transcripts not embedded yet (a missing
        transcript: this model's CTC transcript, in sentence case)."""
        todo = [row for row in rows if features[row] is None]
        for row in todo:
            if texts[row] is None:
                texts[row] = sentence_case(heard[row])
        if todo:
            with _empty_text_said_by_the_recognizer():
                embedded = self.text_encoder([texts[row] for row in todo])
            for row, array in zip(todo, embedded):
                features[row] = array
        text, lengths = pad_rows([torch.from_numpy(features[row]) for row in rows])
        return text.to(self.device), lengths.to(self.device)


def default_names(audios) -> list[str]:
    """What messages call each recording: a file's path, else `array <i>`."""
    return [str(a) if isinstance(a, (str, Path)) else f"array {i}" for i, a in enumerate(audios)]


__all__ = ["EmotionRecognizer", "Prediction", "PredictError", "UnusableInputs", "AudioError", "CheckpointError",
           "OnnxModel", "predictions_table"]
