"""One checkpoint format: a dict with `state_dict` (upstream's layout) plus our config,
epoch and metrics, saved atomically and loaded without executing pickled code; and the
published layouts it reads: upstream's 2022 checkpoints (MMI_Model, CAI_SOTA, UNI_BASELINE
state dicts) and its 2023 ones ({'state_dict': FuseModel.state_dict()}: `model_mmi.*` plus the
two projection heads)."""
import codecs
import io
import mmap
import os
import pickle
import pickletools
import struct
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors

from .base import ModelConfig
from .settings import UNKNOWN_ENCODER
from .errors import MMERError
from .variants import build_model


# transformers 4.x wrote the positional convolution's weight norm as weight_g / weight_v;
# newer versions hold it as a parametrization.
_RENAMES = {
    "pos_conv_embed.conv.weight_g": "pos_conv_embed.conv.parametrizations.weight.original0",
    "pos_conv_embed.conv.weight_v": "pos_conv_embed.conv.parametrizations.weight.original1",
}
_IGNORED_PREFIXES = ("self_attention.",)  # upstream mmer's unused block (self_attention_v2 is used)
# upstream 2023 (src/run_iemocap.py FuseModel): MMI_Model under model_mmi., heads beside it
UPSTREAM_2023_PREFIX = "model_mmi."
_RENAMES_2023 = {"classifier.linear3.": "classifier.", "orgin_linear_change.": "projection.",
                 "augment_linear_change.": "view_projection."}
_IGNORED_2023 = ("weights",)   # MMI_Model.weights: 13 layer weights its forward never uses
# What upstream's 2023 code is, as model settings: fuse_type 'max' pools both streams, dropout
# only before the CTC head, lambda 0.1 on CTC and both contrastive terms, audio cut at 210,000
# samples (src/mmi_module.py, src/run_iemocap.py, src/run_iemocap_infer.py).
UPSTREAM_2022_SETTINGS = {"pooling": "mean", "text_pooling": "mean", "audio_dropout": "all"}
# Settings added after checkpoints were first written: what a checkpoint without them was trained with.
LEGACY_SETTINGS = {"text_pooling": "mean", "audio_dropout": "all", "contrastive": "normalised"}
UPSTREAM_2023_SETTINGS = {"run": "mmer", "alpha": 0.1, "pooling": "max", "text_pooling": "max", "audio_dropout": "ctc",
                          "supcon_weight": 0.1, "aug_weight": 0.1, "contrastive": "upstream",
                          "max_audio_samples": 210_000}


CHECKPOINT_SUFFIXES = (".pt", ".safetensors")  # <session>_model.pt (ours, upstream's) or .safetensors
NOT_A_CHECKPOINT = "not a checkpoint (corrupt or incomplete download?)"
# What torch.load and safetensors raise on bytes that are not what they expect (found by feeding
# them random, cut-short and text files): all mean the file is not a checkpoint.
_UNREADABLE = (pickle.UnpicklingError, SafetensorError, RuntimeError, EOFError, LookupError, ValueError,
               OSError, struct.error, TypeError, AttributeError, OverflowError)
_PUSHES_A_STRING = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING",
                    "STRING"}


class CheckpointError(MMERError, RuntimeError):
    """A checkpoint that cannot be used; the message names the file and the fix."""


def find_checkpoints(folder) -> dict[str, Path]:
    """{session: <folder>/<session>_model.pt or .safetensors}, numeric sessions first, in order
    (a session with both files: the .pt, which carries our model settings)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: checkpoint folder not found; pass the folder run.py wrote "
                              "(<save_path>/<run>) or the one holding the published <session>_model.pt")
    found = {}
    for suffix in reversed(CHECKPOINT_SUFFIXES):
        found.update({p.name[: -len(f"_model{suffix}")]: p for p in folder.glob(f"*_model{suffix}")})
    if not found:
        raise CheckpointError(f"{folder}: no <session>_model.pt (or .safetensors) checkpoints in it; train with "
                              "run.py first or point it at the folder holding them")
    return dict(sorted(found.items(), key=lambda item: (not item[0].isdigit(), item[0].zfill(9))))


def checkpoint_path(folder, session) -> Path:
    """The checkpoint of one session in `folder`: `<session>_model.pt`, else `.safetensors`."""
    candidates = [Path(folder) / f"{session}_model{suffix}" for suffix in CHECKPOINT_SUFFIXES]
    return next((path for path in candidates if path.is_file()), candidates[0])


def save_checkpoint(path, model: torch.nn.Module, **extra) -> None:
    """Write {'state_dict': ..., **extra} atomically; extra must be plain data (weights-only loadable)."""
    save_payload(path, {"state_dict": model.state_dict(), **extra})


def save_payload(path, payload: dict) -> None:
    """Write a checkpoint dict atomically (renamed into place: never half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        torch.save(payload, partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def calibration_temperature(payload: dict, source="checkpoint") -> float:
    """The temperature a checkpoint's probabilities are divided by (run.py --calibrate dev stores
    it under `calibration`); 1.0 for a checkpoint without one (older runs, published ones)."""
    record = payload.get("calibration") or {}
    temperature = record.get("temperature", 1.0) if isinstance(record, dict) else None
    if not isinstance(temperature, (int, float)) or not 0 < float(temperature) < float("inf"):
        raise CheckpointError(f"{source}: its calibration temperature {temperature!r} is not a positive number; "
                              "calibrate the run again (run.py --calibrate dev) or drop the checkpoint's "
                              "'calibration' entry")
    return float(temperature)


def store_calibration(path, record: dict) -> None:
    """Add (or replace) a checkpoint's calibration record, its weights left as they are."""
    payload = load_checkpoint(path)
    calibration_temperature({"calibration": record}, path)
    save_payload(path, {**payload, "calibration": dict(record)})


def scaled_probabilities(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """softmax(logits / T) in float32: the class probabilities of a model calibrated with
    temperature T (T = 1: the plain softmax, bit for bit)."""
    logits = logits.float()
    return torch.softmax(logits if temperature == 1.0 else logits / temperature, dim=-1)


def load_checkpoint(path) -> dict:
    """Load a checkpoint dict without running code: torch.load(weights_only=True), or safetensors.
    A file that is not a checkpoint (empty, cut short, text, an HTML error page) is told so; a
    pickle the safe loader refuses is refused as one that could run code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; check --checkpoint_dir and the file names "
                              "(<session>_model.pt)")
    head = _head(path)
    if not head:
        raise _not_a_checkpoint(path, "the file is empty")
    try:
        payload = _read(path)
    except _UNREADABLE as err:
        raise _refusal(path, head, err) from err
    if not isinstance(payload, dict) or "state_dict" not in payload:
        payload = {"state_dict": payload} if _looks_like_state_dict(payload) else None
    if payload is None:
        raise CheckpointError(f"{path}: no 'state_dict' in the checkpoint; expected a dict "
                              "{'state_dict': ...} as written by run.py or upstream MMER")
    return payload


def _head(path: Path) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(512)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot be read ({err.strerror}); check its permissions") from err


def _read(path: Path):
    if path.suffix == ".safetensors":
        return {"state_dict": load_safetensors(str(path))}
    return torch.load(path, map_location="cpu", weights_only=True)


def _refusal(path: Path, head: bytes, err: Exception) -> CheckpointError:
    """A whole pickle the safe loader refused could run code; anything else is not a checkpoint."""
    imports = _pickle_imports(path) if isinstance(err, pickle.UnpicklingError) else None
    if imports is None:
        return _not_a_checkpoint(path, _what_it_holds(head, err))
    named = f": it imports {', '.join(dict.fromkeys(imports))}" if imports else ""
    return CheckpointError(f"{path}: refused, a pickle that PyTorch's safe loader does not read{named}; loading "
                           "it otherwise could execute code. Only use checkpoints from sources you trust, saved "
                           "as tensors and plain data (torch.save of a state dict) or as safetensors")


def _not_a_checkpoint(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{path}: {NOT_A_CHECKPOINT}: {what}; download it again (compare its size with "
                           "the source's), or save it again with run.py")


def _what_it_holds(head: bytes, err: Exception) -> str:
    """What the file is instead, from its first bytes, else the loader's own words (never torch's
    advice to turn weights_only off)."""
    lowered = head.lstrip().lower()
    if lowered.startswith((b"<!doctype html", b"<html")) or b"<html" in lowered[:200]:
        return "it holds an HTML page (a download's error page?)"
    text = _as_text(head)
    if text is not None:
        return f"it holds text ({text!r})"
    words = str(err).strip().split("\n")[0].split(". ")[0][:160]
    if isinstance(err, pickle.UnpicklingError) or "weights_only" in words or not words:
        return "its bytes are not a whole PyTorch checkpoint"
    return words


def _as_text(head: bytes) -> str | None:
    """The first line of a text file's start; None for binary bytes."""
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head)   # a character cut at the end is fine
    except UnicodeDecodeError:
        return None
    if not text.strip() or not all(c.isprintable() or c.isspace() for c in text):
        return None
    return text.strip().splitlines()[0][:60]


def _pickle_imports(path: Path) -> list[str] | None:
    """The globals ('module.name') the pickle in a .pt (its data.pkl, for torch.save's zip) imports,
    read without running it; None when the file holds no whole pickle."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                member = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
                return None if member is None else _imports(io.BytesIO(archive.read(member)))
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            return _imports(mapped)
    except (OSError, zipfile.BadZipFile, ValueError):
        return None


def _imports(stream) -> list[str] | None:
    """GLOBAL/INST names, and STACK_GLOBAL's from the two strings pushed (or fetched from the
    memo) just before it; None when the bytes stop before the pickle's STOP or hold no opcode."""
    imports, strings, memo, top = [], [], {}, None
    try:
        for op, arg, _ in pickletools.genops(stream):
            if op.name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
                memo[len(memo) if op.name == "MEMOIZE" else arg] = top
                continue
            if op.name in ("GLOBAL", "INST"):
                imports.append(arg.replace(" ", "."))
            elif op.name == "STACK_GLOBAL":
                imports.append(".".join(str(name) for name in strings[-2:]))
            top = arg if op.name in _PUSHES_A_STRING else memo.get(arg) if op.name.endswith("GET") else None
            if top is not None:
                strings.append(top)
    except ValueError:
        return None
    return imports


def _looks_like_state_dict(obj) -> bool:
    return isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values())


def is_upstream_2023(state_dict: dict) -> bool:
    """A checkpoint of upstream's 2023 training script (FuseModel: `model_mmi.*` keys)."""
    return any(_strip_parallel(key).startswith(UPSTREAM_2023_PREFIX) for key in state_dict)


def _strip_parallel(key: str) -> str:
    """torch.nn.DataParallel / DDP wrote `module.` before every key (upstream's inference
    script removes it too)."""
    while key.startswith("module."):
        key = key[len("module."):]
    return key


def upgrade_state_dict(state_dict: dict) -> dict:
    """Map upstream names to ours: `module.` prefixes stripped, the 2023 layout unwrapped
    (`model_mmi.` removed, `classifier.linear3` -> `classifier`, the heads
    orgin_linear_change / augment_linear_change -> projection / view_projection, the unused
    `weights` dropped), transformers-4 weight-norm tensors renamed, the unused 2022 block dropped."""
    upgraded = {}
    for key, value in state_dict.items():
        key = _strip_parallel(key)
        if key.startswith(UPSTREAM_2023_PREFIX):
            key = key[len(UPSTREAM_2023_PREFIX):]
            if key in _IGNORED_2023:
                continue
        for old, new in _RENAMES_2023.items():
            if key.startswith(old):
                key = new + key[len(old):]
        if key.startswith(_IGNORED_PREFIXES):
            continue
        for old, new in _RENAMES.items():
            if key.endswith(old):
                key = key[: -len(old)] + new
        upgraded[key] = value
    return upgraded


def model_settings(payload: dict) -> dict:
    """The model settings a checkpoint records: ours carry their ModelConfig (settings it
    predates: LEGACY_SETTINGS); a published 2023 checkpoint is upstream's 2023 model
    (UPSTREAM_2023_SETTINGS); a published 2022 one upstream's 2022 architecture, its variant
    not recorded (it comes from --run)."""
    saved = payload.get("model_config")
    if saved:
        return {**LEGACY_SETTINGS, **saved}
    if is_upstream_2023(payload["state_dict"]):
        return dict(UPSTREAM_2023_SETTINGS)
    return dict(UPSTREAM_2022_SETTINGS)


def load_weights(model: torch.nn.Module, state_dict: dict, source: str = "checkpoint") -> None:
    """Strict load after upgrading names; any other mismatch is reported by name."""
    state_dict = upgrade_state_dict(state_dict)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong_shape = sorted(k for k in set(expected) & set(state_dict)
                         if tuple(expected[k].shape) != tuple(state_dict[k].shape))
    if missing or unexpected or wrong_shape:
        lines = [f"{source}: does not match the {type(model).__name__} model built from the flags"]
        lines += [f"  missing: {k}" for k in missing[:20]]
        lines += [f"  unexpected: {k}" for k in unexpected[:20]]
        lines += [f"  shape: {k} {tuple(state_dict[k].shape)} vs {tuple(expected[k].shape)}" for k in wrong_shape[:20]]
        lines.append("  check --run, --wav2vec2 (architecture) and the RoBERTa feature size")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(state_dict, strict=True)


def restore_model(path, run: str | None = None, wav2vec2: str | None = None, frozen_encoders: dict | None = None):
    """Rebuild the model a checkpoint holds and load its weights (architecture only, no
    pretrained download). Our checkpoints carry their ModelConfig; published ones get it
    from `run`, `wav2vec2` and the shapes in the state dict. The model's `calibration_temperature`
    is the checkpoint's (1.0 without one). frozen_encoders: to score audio, a model trained on
    cached hidden states gets the frozen encoder that computed them (config.wav2vec2, its
    pretrained weights), shared through this dict by the folds of a run. Returns (model, payload)."""
    payload = load_checkpoint(path)
    published = not payload.get("model_config")
    saved = model_settings(payload)
    if run and saved.get("run", run) != run:
        raise CheckpointError(f"{path}: holds a {saved['run']} model but --run is {run}; pass --run {saved['run']}")
    if "run" not in saved and not run:
        raise CheckpointError(f"{path}: a checkpoint without our model_config; say which model it is with --run")
    state_dict = upgrade_state_dict(payload["state_dict"])
    config = ModelConfig(**{k: v for k, v in saved.items() if k in ModelConfig.__dataclass_fields__})
    config.run = saved.get("run", run)
    if wav2vec2:
        config.wav2vec2 = wav2vec2
    gate = state_dict.get("gate.weight")
    if gate is not None:
        config.text_dim = int(gate.shape[0])
    classifier = state_dict.get("classifier.weight")
    if classifier is not None and published:
        config.num_classes = int(classifier.shape[0])  # published: IEMOCAP's 4
    model = build_model(config, pretrained=False)
    load_weights(model, state_dict, source=str(path))
    model.calibration_temperature = calibration_temperature(payload, path)  # what inference divides logits by
    if config.ssl_states and frozen_encoders is not None:
        model.attach_ssl_encoder(frozen_encoder(path, config, frozen_encoders))
    return model.eval(), payload


def frozen_encoder(path, config: ModelConfig, loaded: dict):
    """The pretrained encoder whose hidden states a model was trained on (loaded once per name)."""
    if config.wav2vec2 == UNKNOWN_ENCODER:
        raise CheckpointError(f"{path}: a {config.run} model on cached hidden states whose folder named no encoder (no "
                              "encoder.json); to score audio, pass --wav2vec2 with the encoder (folder or hub name) "
                              "that wrote them")
    if config.wav2vec2 not in loaded:
        from .encoders import load_speech_encoder
        try:
            loaded[config.wav2vec2] = load_speech_encoder(config.wav2vec2, attn_implementation=config.attn_implementation)
        except OSError as err:
            raise CheckpointError(f"{path}: a {config.run} model on the cached hidden states of {config.wav2vec2}, "
                                  f"which scores audio by computing them again: that encoder cannot be loaded ({err}); "
                                  "pass --wav2vec2 with the encoder (folder or hub name) that wrote them") from err
    return loaded[config.wav2vec2]
