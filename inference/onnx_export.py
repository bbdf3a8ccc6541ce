"""The ONNX export of a trained run (export.py is its command line): the graphs a fold's model,
mmer's fusion and its text encoder become, their example inputs, the check of every graph against
PyTorch with onnxruntime, and the manifest a runtime reads (inference.EmotionRecognizer.from_onnx).
An export names models as another machine would (shared_name): no path of the exporting machine
is written, neither in the manifest nor in the graphs' node metadata."""
import json
import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dataio.audio import NORMALIZE_EPS
from dataio.labels import LabelSet
from dataio.text import VOCAB_FILE
from dataio.text_features import TextFeatureError, encoder_stamp, load_text_encoder
from models.text import max_tokens
from inference.onnx_runtime import ONNX_MANIFEST, ONNX_MANIFEST_VERSIONS
from inference.runs import recorded_roberta
from models.base import AudioFrames
from models.checkpoint import find_checkpoints, restore_model
from models.encoders import audio_input_spec, min_samples_of, padding_is_exact, sample_counts
from models.errors import MMERError
from models.fusion import lengths_to_mask
from utils.files import atomic_write_text
from utils.provenance import git_commit, package_versions

log = logging.getLogger("mmer.export")
MANIFEST = ONNX_MANIFEST  # what inference.EmotionRecognizer.from_onnx reads
# version 2 only where a fold has a calibration temperature, which a version-1 runtime would ignore;
# 3 only for --task dimensional, whose untrained probabilities an older runtime would report
MANIFEST_VERSION = ONNX_MANIFEST_VERSIONS[0]
TEXT_ENCODER = "text_encoder.onnx"
TOKENIZER_DIR = "text_encoder_tokenizer"
MIN_OPSET = 18  # the dynamo exporter's lowest
# Probabilities of a graph further than this from PyTorch's fail the export (measured: ~1e-7).
CHECK_TOLERANCE = 1e-4
EXPORT_VERSIONS = ("torch", "transformers", "onnx", "onnxscript", "onnxruntime", "numpy")
STACK_TRACE = "pkg.torch.onnx.stack_trace"  # node metadata: the exporting machine's source paths
LOCAL = "local:"  # a local folder's name in an export, e.g. local:roberta


class ExportError(MMERError, RuntimeError):
    """An export that cannot be done or would be wrong; the message names the file and the fix."""


def is_local_model(name) -> bool:
    """Whether a model name is a folder of this machine (as transformers reads it: an existing
    path first) rather than a Hub id."""
    path = Path(str(name)).expanduser()
    return path.is_absolute() or path.exists()


def shared_name(name) -> str:
    """How an export names a model: a Hub id as it is; a local folder, whose path means nothing
    on another machine, as `local:<its folder's name>` (its files are in the export, or are not
    needed there)."""
    if not is_local_model(name):
        return str(name)
    return LOCAL + Path(str(name)).expanduser().resolve().name


# ---------------------------------------------------------------- what the graphs compute
def calibrated_softmax(logits, temperature: float):
    """The graphs' probabilities: softmax(logits / T) with the fold's calibration temperature (run.py
    --calibrate dev); T = 1 adds no node, so an uncalibrated run's graphs are as before."""
    return torch.softmax(logits if temperature == 1.0 else logits / temperature, dim=-1)


class ModelGraph(nn.Module):
    """`<fold>_model.onnx`: the model's forward in eval mode on normalised audio. Without an
    attention mask every row is a whole recording (wav2vec2-base: never pad, see manifest);
    with one, the true sample counts are the mask's sums. `logits` are the model's, and
    `probabilities` those of its checkpoint's calibration temperature; `attributes` (a model
    with an attribute head) the head's output on the normalised [0, 1] scale, as the model's own
    (the manifest's attributes entry says how to map them to the corpus's units)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.temperature = float(getattr(model, "calibration_temperature", 1.0))

    def forward(self, input_values, attention_mask=None, text_features=None, text_lengths=None):
        audio = self.model.encode_audio(input_values, sample_counts(input_values, attention_mask), attention_mask)
        output = self.model.classify(audio, text_features, text_lengths)
        outputs = {"probabilities": calibrated_softmax(output.logits, self.temperature), "logits": output.logits,
                   "frame_lengths": output.frame_lengths, "ctc_logits": output.ctc_logits,
                   "audio_frames": audio.frames if self.model.uses_text else None,
                   "attributes": head_attributes(self.model, output)}
        return tuple(outputs[name] for name in model_outputs(self.model))


class FusionGraph(nn.Module):
    """`<fold>_fusion.onnx` (mmer): the classification from the audio frames the model graph
    gave and the text features, for a transcript known only after the CTC head has spoken."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.temperature = float(getattr(model, "calibration_temperature", 1.0))

    def forward(self, audio_frames, frame_lengths, text_features, text_lengths):
        audio = AudioFrames(audio_frames, lengths_to_mask(frame_lengths, audio_frames.shape[1]), frame_lengths)
        output = self.model.classify(audio, text_features, text_lengths)
        outputs = {"probabilities": calibrated_softmax(output.logits, self.temperature), "logits": output.logits,
                   "attributes": head_attributes(self.model, output)}
        return tuple(outputs[name] for name in fusion_outputs(self.model))


def head_attributes(model, output):
    """The attribute head's output [B, A] on the normalised scale, from the embedding the
    classifier read (as the model's forward computes it); None without an attribute head."""
    return model.attribute_head(output.embedding) if has_attributes(model) else None


def has_attributes(model) -> bool:
    return hasattr(model, "attribute_head")


class TextEncoderGraph(nn.Module):
    """`text_encoder.onnx`: the text encoder's last hidden state, as data_prep/extract_roberta.py computes it."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids, attention_mask):
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def model_inputs(model, attention_mask: bool) -> list[str]:
    return ["input_values"] + (["attention_mask"] if attention_mask else []) + \
        (["text_features", "text_lengths"] if model.uses_text else [])


def model_outputs(model) -> list[str]:
    return ["probabilities", "logits", "frame_lengths"] + (["ctc_logits"] if model.has_ctc else []) + \
        (["audio_frames"] if model.uses_text else []) + (["attributes"] if has_attributes(model) else [])


def fusion_outputs(model) -> list[str]:
    return ["probabilities", "logits"] + (["attributes"] if has_attributes(model) else [])



# The names of the dynamic axes of every graph input and output (None: a fixed size). torch.export
# names them s0, s1, ... or by length formulas; the manifest and runtimes read these instead.
AXES = {"input_values": ("batch", "samples"), "attention_mask": ("batch", "samples"),
        "text_features": ("batch", "tokens", None), "text_lengths": ("batch",),
        "probabilities": ("batch", None), "logits": ("batch", None), "frame_lengths": ("batch",),
        "ctc_logits": ("batch", "frames", None), "audio_frames": ("batch", "frames", None),
        "attributes": ("batch", None),
        "input_ids": ("batch", "tokens"), "last_hidden_state": ("batch", "tokens", None)}
TEXT_AXES = {**AXES, "attention_mask": ("batch", "tokens")}  # the text encoder's mask is over tokens


# ---------------------------------------------------------------- example inputs
def audio_example(lengths: list[int], attention_mask: bool, seed: int) -> dict:
    """Normalised noise, one row per length, padded with zeros and masked (rows must be of
    equal length without a mask)."""
    rng = np.random.default_rng(seed)
    width = max(lengths)
    audio = np.zeros((len(lengths), width), np.float32)
    for row, n in enumerate(lengths):
        audio[row, :n] = rng.standard_normal(n)
    feeds = {"input_values": audio}
    if attention_mask:
        feeds["attention_mask"] = (np.arange(width)[None, :] < np.array(lengths)[:, None]).astype(np.int64)
    return feeds


def text_example(tokens: list[int], dim: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"text_features": rng.standard_normal((len(tokens), max(tokens), dim)).astype(np.float32),
            "text_lengths": np.array(tokens, dtype=np.int64)}


def model_examples(model, spec, min_samples: int) -> tuple[dict, list[dict]]:
    """The traced inputs (2 rows of 1 s) and the checks: lengths not traced, one row at a time
    (and a padded batch where the encoder takes a mask), the shortest input, and for mmer a
    one-token text (what the recognizer feeds before the CTC transcript is known)."""
    mask, dim = spec.return_attention_mask, model.config.text_dim

    def with_text(feeds, tokens, seed):
        return {**feeds, **text_example(tokens, dim, seed)} if model.uses_text else feeds

    traced = with_text(audio_example([16000, 16000] if not mask else [16000, 11000], mask, 0), [6, 4], 0)
    checks = [with_text(audio_example([20800], mask, 1), [9], 1),
              with_text(audio_example([8830], mask, 2), [1], 2),
              with_text(audio_example([min_samples], mask, 3), [3], 3)]
    if mask:
        checks.append(with_text(audio_example([20800, 8830], mask, 4), [9, 5], 4))
    else:
        checks.append(with_text(audio_example([8830, 8830, 8830], mask, 4), [9, 5, 1], 4))
    return traced, checks


# ---------------------------------------------------------------- export and check
def export_graph(module: nn.Module, example: dict, outputs: list[str], path: Path, opset: int | None,
                 axes: dict = AXES) -> dict:
    """torch.onnx.export (dynamo) of module(**example) to `path`, every axis `axes` names dynamic;
    -> the graph's opset, inputs and outputs ({name, shape, dtype})."""
    kwargs = {name: torch.from_numpy(value) for name, value in example.items()}
    # Dim.DYNAMIC rather than named Dims with a minimum: the models' guards (e.g. transformers'
    # `query length > 1` in its SDPA call) raise a named Dim's minimum, which costs the exporter a
    # second trace; the check below runs the graph on the shortest input all the same.
    dynamic = {name: {axis: torch.export.Dim.DYNAMIC for axis, named in enumerate(axes[name]) if named}
               for name in example}
    with warnings.catch_warnings(), quiet_exporter():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module.eval(), (), kwargs=kwargs, dynamo=True, verbose=False,
                                    dynamic_shapes=dynamic, input_names=list(example), output_names=outputs,
                                    opset_version=opset)
    if program is None:
        raise ExportError(f"{path}: torch.onnx.export returned no program; check the torch version")
    for value in [*program.model.graph.inputs, *program.model.graph.outputs]:
        value.shape = type(value.shape)([named or size for named, size in zip(axes[value.name], value.shape)])
    drop_stack_traces(program.model)
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path))
    return {"opset": int(program.model.opset_imports[""]),
            "inputs": [describe(v) for v in program.model.graph.inputs],
            "outputs": [describe(v) for v in program.model.graph.outputs]}


def drop_stack_traces(model) -> None:
    """The exporter records each node's Python stack trace, file paths of the exporting machine
    (this repository, its packages) among it; a runtime reads none of it."""
    functions = model.functions.values()
    for node in [*model.graph.all_nodes(), *(node for function in functions for node in function.all_nodes())]:
        node.metadata_props.pop(STACK_TRACE, None)


def describe(value) -> dict:
    shape = [d if isinstance(d, int) else str(getattr(d, "value", d)) for d in value.shape]
    return {"name": value.name, "shape": shape, "dtype": str(value.dtype.numpy())}


class quiet_exporter:
    """The exporter logs a line per step and warns about torchvision; its errors still raise."""

    def __enter__(self):
        self.loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript", "onnx_ir")]
        self.levels = [logger.level for logger in self.loggers]
        for logger in self.loggers:
            logger.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        for logger, level in zip(self.loggers, self.levels):
            logger.setLevel(level)


def check_graph(path: Path, module: nn.Module, checks: list[dict], outputs: list[str]) -> dict:
    """Run the graph with onnxruntime on each check's inputs and compare every output with
    PyTorch's; -> the largest absolute difference per output. Probabilities further apart than
    CHECK_TOLERANCE fail the export, and so do attributes (on the normalised scale)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = dict.fromkeys(outputs, 0.0)
    for feeds in checks:
        try:
            got = session.run(outputs, feeds)
        except Exception as err:  # onnxruntime's own error types (InvalidArgument, Fail, ...) share no base
            shapes = {name: value.shape for name, value in feeds.items()}
            raise ExportError(f"{path}: onnxruntime cannot run the exported graph on inputs of shapes {shapes} "
                              f"({str(err).splitlines()[0]}); its axes did not stay dynamic, report it with the "
                              "torch and onnx versions") from err
        with torch.inference_mode():
            expected = module(**{name: torch.from_numpy(value) for name, value in feeds.items()})
        expected = expected if isinstance(expected, tuple) else (expected,)
        for name, a, b in zip(outputs, got, expected):
            if a.shape != tuple(b.shape):
                raise ExportError(f"{path}: output {name} has shape {a.shape} in onnxruntime but {tuple(b.shape)} "
                                  "in PyTorch; the export did not keep the lengths dynamic")
            worst[name] = max(worst[name], float(np.abs(a.astype(np.float64) - b.numpy()).max(initial=0.0)))
    if (worst.get("probabilities", 0.0) > CHECK_TOLERANCE or worst.get("attributes", 0.0) > CHECK_TOLERANCE
            or worst.get("last_hidden_state", 0.0) > 1e-3):
        raise ExportError(f"{path}: onnxruntime differs from PyTorch by {worst} (tolerance {CHECK_TOLERANCE} on "
                          "probabilities); the exported graph is wrong, report it with the torch and onnx versions")
    return worst


def export_fold(model, fold: str, out: Path, opset: int | None, spec, min_samples: int) -> tuple[dict, dict]:
    """`<fold>_model.onnx` (and mmer's `<fold>_fusion.onnx`), checked; -> the fold's manifest entry,
    and each graph's opset, inputs and outputs."""
    traced, checks = model_examples(model, spec, min_samples)
    graph = ModelGraph(model)
    entry = {"model": f"{fold}_model.onnx"}
    described = {"model": export_graph(graph, traced, model_outputs(model), out / entry["model"], opset)}
    checked = {"model": check_graph(out / entry["model"], graph, checks, model_outputs(model))}
    if model.uses_text:
        entry["fusion"] = f"{fold}_fusion.onnx"
        fusion, fusion_traced, fusion_checks = FusionGraph(model), *fusion_examples(graph, traced, checks)
        described["fusion"] = export_graph(fusion, fusion_traced, fusion_outputs(model), out / entry["fusion"], opset)
        checked["fusion"] = check_graph(out / entry["fusion"], fusion, fusion_checks, fusion_outputs(model))
    return {**entry, "max_abs_diff_vs_torch": checked}, described


def fusion_examples(graph: ModelGraph, traced: dict, checks: list[dict]) -> tuple[dict, list[dict]]:
    """The fusion graph's inputs: the model graph's audio frames for each example, with its text."""
    def fusion_feeds(feeds):
        with torch.inference_mode():
            outputs = dict(zip(model_outputs(graph.model), graph(**{k: torch.from_numpy(v) for k, v in feeds.items()})))
        return {"audio_frames": outputs["audio_frames"].numpy(), "frame_lengths": outputs["frame_lengths"].numpy(),
                "text_features": feeds["text_features"], "text_lengths": feeds["text_lengths"]}
    return fusion_feeds(traced), [fusion_feeds(feeds) for feeds in checks]


def checked_text_encoder(roberta: str, text_dim: int) -> tuple:
    """mmer's text encoder (tokenizer, model), loaded before any fold is exported so a missing
    or wrong one fails at once."""
    try:
        tokenizer, encoder = load_text_encoder(roberta, "cpu")
    except TextFeatureError as err:
        raise ExportError(f"{err} (the run's text encoder, recorded in its config.json; pass --roberta)") from err
    if encoder.config.hidden_size != text_dim:
        raise ExportError(f"{roberta}: gives {encoder.config.hidden_size}-dim features but the checkpoints read "
                          f"{text_dim}-dim ones; pass --roberta the text encoder the run was trained with")
    return tokenizer, encoder


def export_text_encoder(roberta: str, tokenizer, encoder, out: Path, opset: int | None) -> tuple[dict, dict]:
    """`text_encoder.onnx` and its tokenizer (with the encoder's config, which sets the token
    limit) in `text_encoder_tokenizer/`; -> the manifest's text_encoder entry, and the graph's
    opset, inputs and outputs."""
    texts = ["I think we should talk about it tomorrow.", "Oh no!", "Well, you know?"]
    traced = as_int64(tokenizer(texts[:2], padding=True, return_tensors="np"))
    checks = [as_int64(tokenizer(texts, padding=True, return_tensors="np")),
              as_int64(tokenizer(texts[1:2], return_tensors="np"))]
    graph = TextEncoderGraph(encoder)
    described = export_graph(graph, traced, ["last_hidden_state"], out / TEXT_ENCODER, opset, TEXT_AXES)
    checked = check_graph(out / TEXT_ENCODER, graph, checks, ["last_hidden_state"])
    tokenizer.save_pretrained(out / TOKENIZER_DIR)
    encoder.config.save_pretrained(out / TOKENIZER_DIR)
    name = shared_name(roberta)
    return {"name": name, "stamp": {**encoder_stamp(roberta), "roberta": name}, "file": TEXT_ENCODER,
            "tokenizer": TOKENIZER_DIR,
            "hidden_size": int(encoder.config.hidden_size), "max_tokens": max_tokens(tokenizer, encoder),
            "max_abs_diff_vs_torch": checked}, described


def as_int64(encoded: dict) -> dict:
    return {name: np.asarray(encoded[name], dtype=np.int64) for name in ("input_ids", "attention_mask")}


# ---------------------------------------------------------------- the whole run
def export_run(run_dir, out, session=None, opset: int | None = None, run=None, wav2vec2=None, roberta=None,
               overwrite: bool = False) -> dict:
    """Export every fold's checkpoint of `run_dir` (or one `session`'s) into `out`; -> the manifest."""
    run_dir, out = Path(run_dir), Path(out)
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir}: run folder not found; pass the folder run.py wrote (<save_path>/<run>) "
                          "holding <fold>_model.pt")
    found = find_checkpoints(run_dir)
    if session is not None and str(session) not in found:
        raise ExportError(f"{run_dir}/{session}_model.pt not found; folds there: {', '.join(found)}")
    chosen = {str(session): found[str(session)]} if session is not None else found
    encoders = {}   # a probe's frozen encoder, loaded once for every fold
    restored = restore_model(next(iter(chosen.values())), run, wav2vec2, frozen_encoders=encoders)
    first = restored[0]
    text_source = None
    if first.uses_text:  # before any fold, so a missing text encoder fails at once
        name = recorded_roberta(run_dir, roberta)
        text_source = (name, *checked_text_encoder(name, first.config.text_dim))
    clear_out(out, overwrite)
    folds = {}
    for k, (fold, path) in enumerate(chosen.items()):
        model, payload = restored if k == 0 else restore_model(path, run, wav2vec2, frozen_encoders=encoders)
        if model.config.run != first.config.run or model.config.wav2vec2 != first.config.wav2vec2:
            raise ExportError(f"{path}: holds a {model.config.run} model on {model.config.wav2vec2}, unlike the first "
                              f"fold's {first.config.run} on {first.config.wav2vec2}; export one run at a time")
        if attribute_entry(model) != attribute_entry(first):
            raise ExportError(f"{path}: predicts {attribute_entry(model)}, unlike the first fold's "
                              f"{attribute_entry(first)}; export one run at a time")
        spec = audio_input_spec(model.config.wav2vec2)
        log.info("fold %s: exporting %s", fold, path)
        entry, graphs = export_fold(model, fold, out, opset, spec, min_samples_of(model.wav2vec2.config))
        folds[fold] = {**entry, "checkpoint": path.name, "epoch": payload.get("epoch"),
                       "model_config": {**model.config.to_dict(), "wav2vec2": shared_name(model.config.wav2vec2)},
                       "calibration_temperature": model.calibration_temperature}
    text = None
    if text_source is not None:
        log.info("exporting the text encoder %s", text_source[0])
        text, graphs["text_encoder"] = export_text_encoder(*text_source, out, opset)
    manifest = build_manifest(first, spec, folds, text, graphs)
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    log.info("wrote %d fold(s) and %s", len(folds), out / MANIFEST)
    return manifest


def clear_out(out: Path, overwrite: bool) -> None:
    """An earlier export in `out` is replaced only with --overwrite (its files are removed first)."""
    if not (out / MANIFEST).is_file():
        return
    if not overwrite:
        raise ExportError(f"{out}: holds an export already ({MANIFEST}); pass --overwrite to replace it, or another "
                          "--out")
    for path in [out / MANIFEST, *out.glob("*.onnx"), *out.glob("*.onnx.data")]:
        path.unlink()
    shutil.rmtree(out / TOKENIZER_DIR, ignore_errors=True)


def build_manifest(model, spec, folds: dict, text: dict | None, graphs: dict) -> dict:
    """What a runtime needs besides the graphs: classes, audio preparation, inputs and outputs,
    CTC decoding, the text encoder, and how the graphs chain."""
    encoder_config = model.wav2vec2.config
    calibrated = any(entry["calibration_temperature"] != 1.0 for entry in folds.values())
    version = 3 if model.config.task == "dimensional" else 2 if calibrated else MANIFEST_VERSION
    return {
        "manifest_version": version,
        "format": "onnx", "run": model.config.run,
        "classes": list(LabelSet.from_dict(model.config.labels).classes), "labels": model.config.labels,
        "sample_rate": spec.sampling_rate,
        "normalisation": {"where": "before the graph", "per_recording": bool(spec.do_normalize), "eps": NORMALIZE_EPS,
                          "formula": "x = (x - mean(x)) / sqrt(var(x) + eps), over each recording's own samples"},
        "audio": {"padding_value": spec.padding_value, "attention_mask": bool(spec.return_attention_mask),
                  "padding_exact": padding_is_exact(encoder_config, spec),
                  "min_samples": min_samples_of(encoder_config),
                  "batching": ("rows may be padded (with padding_value) and masked"
                               if padding_is_exact(encoder_config, spec) else
                               "no padding: one recording per run, or rows of exactly equal length")},
        "speech_encoder": shared_name(model.config.wav2vec2),
        "text_encoder": text, "text_dim": model.config.text_dim if model.uses_text else None,
        "task": model.config.task, "attributes": attribute_entry(model),
        "folds": folds,
        "inputs": {name: graph["inputs"] for name, graph in graphs.items()},
        "outputs": {name: graph["outputs"] for name, graph in graphs.items()},
        "opset": graphs["model"]["opset"],
        "ctc": ({"vocabulary": json.loads(VOCAB_FILE.read_text()), "blank": 0,
                 "decoding": "greedy: argmax per frame over the first frame_lengths frames, merge repeats, drop "
                             "<pad> (the blank) and <s> </s> <unk>, '|' is a space; mmer embeds it in sentence case"}
                if model.has_ctc else None),
        "how_to_run": how_to_run(model, spec, calibrated),
        "versions": package_versions(EXPORT_VERSIONS), "git_commit": git_commit(),
    }


def attribute_entry(model) -> dict | None:
    """The manifest's record of the attributes a model predicts: their names in the graphs'
    column order and the corpus's rating scale; None without an attribute head."""
    if not has_attributes(model):
        return None
    low, high = model.config.attribute_range
    return {"names": list(model.config.attributes), "range": [float(low), float(high)],
            "graph_scale": "normalised: the corpus's units are attributes * (high - low) + low"}


def how_to_run(model, spec, calibrated: bool = False) -> list[str]:
    mask = " and attention_mask [batch, samples] (int64, 1 on the samples)" if spec.return_attention_mask else ""
    steps = [(f"audio: {spec.sampling_rate} Hz mono float32, normalised per recording (see normalisation), as "
              f"input_values [batch, samples]{mask}; audio.batching says what may share a run")]
    if has_attributes(model):
        steps.append("attributes: each graph's attributes [batch, A] are the columns attributes.names on the "
                     "normalised scale; value * (high - low) + low with attributes.range [low, high] gives the "
                     "corpus's units, as run.py reports them")
    if model.config.task == "dimensional":
        steps.append("task dimensional: the classifier was never trained; report the attributes only, not the "
                     "probabilities")
    if calibrated:
        steps.append("calibration: each graph's probabilities are softmax(logits / T) with its fold's "
                     "calibration_temperature T (run.py --calibrate dev); its logits are the model's, so divide them "
                     "by T before a softmax of your own")
    if not model.uses_text:
        return [*steps, "<fold>_model.onnx -> probabilities [batch, classes], in the order of classes"]
    return [
        *steps,
        ("text: text_encoder_tokenizer (with <s> </s>, at most text_encoder.max_tokens tokens) -> input_ids, "
         "attention_mask -> text_encoder.onnx -> last_hidden_state; row i's first n_i tokens are its "
         "text_features, text_lengths = n_i"),
        "with a transcript: <fold>_model.onnx on the audio and the text -> probabilities",
        ("without one: <fold>_model.onnx with a one-token zero text (text_lengths 1) for ctc_logits, frame_lengths "
         "and audio_frames; decode ctc_logits (see ctc), embed that text, then <fold>_fusion.onnx on audio_frames, "
         "frame_lengths, text_features, text_lengths -> probabilities"),
    ]
