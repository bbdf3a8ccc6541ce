"""The onnxruntime backend: a run exported by export.py (its manifest, one graph per fold and
the text encoder's) run instead of the PyTorch models; the recognizer's windows, transcripts,
batching and labels stay its one path, only the model calls differ."""
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dataio.text_features import tokenize
from inference.prediction import PredictError
from inference.runs import select_checkpoints
from models import EmotionOutput, ModelConfig, model_class
from models.encoders import AudioInputSpec


ONNX_MANIFEST = "manifest.json"  # export.py's


# 2: the folds have calibration temperatures (run.py --calibrate dev), which a version-1 reader would ignore;
# 3: run.py --task dimensional, whose graphs' probabilities (an untrained classifier) an older reader would report
ONNX_MANIFEST_VERSIONS = (1, 2, 3)


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


def manifest_temperature(entry: dict, manifest: Path) -> float:
    """A fold's calibration temperature in the manifest (1.0 for exports without one)."""
    temperature = entry.get("calibration_temperature", 1.0)
    if not isinstance(temperature, (int, float)) or not 0 < float(temperature) < float("inf"):
        raise PredictError(f"{manifest}: calibration_temperature {temperature!r} is not a positive number; re-export")
    return float(temperature)


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
        # the graph's logits are the model's; the recognizer divides them by this (run.py --calibrate)
        self.calibration_temperature = manifest_temperature(entry, folder / ONNX_MANIFEST)
        self.graph = onnx_session(folder / entry["model"], threads)
        self.fusion = onnx_session(folder / entry["fusion"], threads) if self.uses_text else None
        self.outputs = [o.name for o in self.graph.get_outputs()]
        self.name = folder / entry["model"]
        if self.config.task != "categorical" and "attributes" not in self.outputs:
            raise PredictError(f"{self.name}: a --task {self.config.task} model exported without its attributes "
                               "(an export of older code); export the run again with export.py")

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
        """-> the logits and, for a model with an attribute head, its attributes (normalised)."""
        wanted = ["logits"] + (["attributes"] if "attributes" in self.outputs else [])
        got = [audio.frames[name] for name in wanted]
        if self.uses_text:
            if text is None or text_lengths is None:
                raise ValueError("mmer needs the transcript's text features (text, text_lengths)")
            got = self.fusion.run(wanted, {
                "audio_frames": audio.frames["audio_frames"], "frame_lengths": audio.frames["frame_lengths"],
                "text_features": text.numpy().astype(np.float32), "text_lengths": text_lengths.numpy()})
        outputs = dict(zip(wanted, (torch.from_numpy(value) for value in got)))
        return EmotionOutput(logits=outputs["logits"], frame_lengths=audio.lengths, ctc_logits=self.ctc_head(audio),
                             attributes=outputs.get("attributes"))


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
