"""A trained run's models: its checkpoints found and restored (one fold's or all of them), the
text encoder its features came from, and the batch size that suits the device."""
import json
import logging
from pathlib import Path

import torch

from dataio.text_features import TextFeatureError, agreed_text_encoder
from inference.prediction import PredictError
from models.checkpoint import CheckpointError, find_checkpoints, restore_model
from models.hf_model import FolderFormatError, MMERConfig, MMERForEmotionRecognition
from utils.hub import check_model_name

log = logging.getLogger("mmer.inference")


DEFAULT_ROBERTA = "roberta-base"


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
    models, encoders = {}, {}
    for path in select_checkpoints(find_checkpoints(checkpoint_dir), session, ensemble):
        model, _ = restore_model(path, run, wav2vec2, frozen_encoders=encoders)
        models[path] = model.to(device).eval()
    runs = {model.config.run for model in models.values()}
    if len(runs) > 1:
        raise CheckpointError(f"{checkpoint_dir}: the checkpoints hold different models ({', '.join(sorted(runs))}); "
                              "an ensemble averages the folds of one run, pick one with --session")
    return models


def load_folder(folder, device="cpu") -> tuple[dict, MMERConfig]:
    """A shared model folder (export.py --format hf) -> ({"<folder>#<fold>": model in eval mode on
    `device`}, its config); every weight of model.safetensors must fit the config's networks."""
    folder = Path(folder)
    try:
        raw = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise PredictError(f"{folder}: no readable config.json ({err}); pass a folder export.py --format hf "
                           "wrote") from err
    if "mmer_format" not in raw:
        raise PredictError(f"{folder}: not a shared MMER model folder (its config.json has no mmer_format); a run "
                           "folder goes to --checkpoint_dir, export.py's ONNX graphs to --onnx_dir")
    try:
        network, info = MMERForEmotionRecognition.from_pretrained(folder, output_loading_info=True)
    except FolderFormatError as err:
        raise PredictError(f"{folder}: {err}") from err
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{folder}: cannot load the model ({err}); export the run again") from err
    wrong = {kind: keys for kind, keys in info.items() if keys and kind in ("missing_keys", "unexpected_keys",
                                                                           "mismatched_keys")}
    if wrong:
        raise CheckpointError(f"{folder}/model.safetensors does not fit its config.json ({wrong}); export the run again")
    models = {}
    for fold, model in zip(network.config.folds, network.folds):
        model.config.wav2vec2 = str(folder)   # the speech encoder's feature extractor is the folder's
        models[f"{folder}#{fold}"] = model.to(device).eval()
    log.info("%s: %s, fold(s) %s", folder, network.config.variant, ", ".join(network.config.folds))
    return models, network.config


def recorded_roberta(checkpoint_dir, roberta: str | None = None) -> str:
    """The text encoder of the run's features, recorded in its config.json (training.runinfo.write_config);
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
