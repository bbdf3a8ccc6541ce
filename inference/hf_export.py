"""A trained run as a self-contained Hugging Face model folder (export.py --format hf is its
command line): config.json (auto_map and the registered audio-classification pipeline point at
the bundled code), model.safetensors, the models/ package itself (the code that loads them: it
imports only torch and transformers, and its pipeline soundfile), the speech encoder's feature
extractor, the CTC vocabulary, the text encoder (its Hub name; with include_text_encoder, which a
local text encoder needs, its weights and tokenizer), the speech recogniser for missing
transcripts (a Hub name; a local folder copied into asr/), the label set and a model card from the
run's results. Models are named as another machine reads them (onnx_export.shared_name): no path
of the exporting machine is written. The folder is written under a temporary name, checked by
loading it back against the run's own models, then moved into place; `push` uploads it with
huggingface_hub."""
import json
import logging
import os
import shutil
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
from transformers import AutoFeatureExtractor

import models
from dataio.asr import asr_backend
from dataio.labels import LabelSet
from dataio.text import ctc_tokenizer
from dataio.text_features import encoder_stamp
from inference.model_card import model_card
from inference.onnx_export import ExportError, checked_text_encoder, is_local_model, shared_name
from inference.onnx_runtime import ONNX_MANIFEST
from inference.runs import load_models, recorded_roberta
from inference.transcripts import Recogniser
from models.checkpoint import scaled_probabilities
from models.hf_model import MMERConfig, MMERForEmotionRecognition
from utils.files import atomic_write_text
from utils.provenance import git_commit, package_versions

log = logging.getLogger("mmer.export")
PIPELINE = {"impl": "hf_pipeline.MMERAudioClassificationPipeline", "pt": ["AutoModel"], "tf": [], "type": "audio"}
AUTO_MAP = {"AutoConfig": "hf_model.MMERConfig", "AutoModel": "hf_model.MMERForEmotionRecognition"}
TEXT_ENCODER_DIR, CTC_TOKENIZER_DIR, ASR_DIR, EXPORT_RECORD = "text_encoder", "ctc_tokenizer", "asr", "mmer_export.json"
# Not copied with a local recogniser: a clone's history, huggingface_hub's download records, bytecode,
# and a transformers Trainer checkpoint's training state (it records this machine's paths; inference
# reads none of it).
NOT_BUNDLED = (".git", ".cache", "__pycache__", "training_args.bin", "trainer_state.json", "optimizer.pt",
               "scheduler.pt", "scaler.pt", "rng_state*.pth")
# Keys of a model folder's json files naming where it was loaded from (transformers 4 saved them).
ORIGIN_KEYS = ("_name_or_path", "name_or_path")
CHECK_TOLERANCE = 1e-5   # probabilities of the reloaded folder against the run's models (measured: 0)
PUSH_TIMEOUT_S = 5


# ---------------------------------------------------------------- what is exported
def finished_results(run_dir: Path) -> dict:
    """The run's results.json, or the reason this is no finished run folder of run.py."""
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir}: run folder not found; pass the folder run.py wrote (<save_path>/<run>)")
    if (run_dir / ONNX_MANIFEST).is_file() or (run_dir / EXPORT_RECORD).is_file():
        kind = "an ONNX export" if (run_dir / ONNX_MANIFEST).is_file() else "a shared model folder"
        raise ExportError(f"{run_dir}: is {kind}, not a run folder; pass the folder run.py wrote (<save_path>/<run>)")
    if not (run_dir / "config.json").is_file():
        raise ExportError(f"{run_dir}: not a run folder of run.py (no config.json); published checkpoints are "
                          "re-evaluated with run.py --eval_only, and a run folder is exported")
    if not (run_dir / "results.json").is_file():
        done = sorted(p.name[: -len("_result.json")] for p in run_dir.glob("*_result.json"))
        raise ExportError(f"{run_dir}: the run has not finished (no results.json; folds finished: "
                          f"{', '.join(done) or 'none'}); finish it with run.py ... --resume, then export")
    try:
        return json.loads((run_dir / "results.json").read_text())
    except json.JSONDecodeError as err:
        raise ExportError(f"{run_dir / 'results.json'}: not valid JSON ({err}); run run.py --resume to rewrite it") from err


def chosen_folds(results: dict, run_dir: Path, session, ensemble: bool) -> list[str]:
    finished = list(results.get("folds", {}))
    if ensemble:
        return finished
    if session is None:
        if len(finished) > 1:
            log.warning("exporting fold %s's model, the first of %d; --session picks another, --ensemble takes all",
                        finished[0], len(finished))
        return finished[:1]
    if str(session) not in finished:
        raise ExportError(f"{run_dir}: no fold {session} among the run's finished folds ({', '.join(finished)}); "
                          "pass one of them to --session")
    return [str(session)]


def build_network(fold_models: dict, folds: list[str], extra: dict) -> MMERForEmotionRecognition:
    """MMERForEmotionRecognition holding the folds' models' weights."""
    first = next(iter(fold_models.values()))
    encoders = {json.dumps(m.wav2vec2.config.to_dict(), sort_keys=True) for m in fold_models.values()}
    if len(encoders) > 1:
        raise ExportError("the folds' speech encoders differ; export one fold with --session")
    scales = {(m.config.task, str(m.config.attributes), str(m.config.attribute_range)) for m in fold_models.values()}
    if len(scales) > 1:
        raise ExportError(f"the folds predict different attributes or on different scales ({sorted(scales)}); "
                          "export one fold with --session")
    classes = LabelSet.from_dict(first.config.labels).classes
    name = shared_name(first.config.wav2vec2)   # the folder's own speech encoder is built from its configuration
    temperatures = [m.calibration_temperature for m in fold_models.values()]   # run.py --calibrate dev
    config = MMERConfig(model_config={**first.config.to_dict(), "wav2vec2": name},
                        speech_encoder={**first.wav2vec2.config.to_dict(), "_name_or_path": name},
                        calibration_temperatures=temperatures if any(t != 1.0 for t in temperatures) else None,
                        folds=folds, id2label=dict(enumerate(classes)),
                        label2id={name: i for i, name in enumerate(classes)}, **extra)
    config.auto_map, config.custom_pipelines = dict(AUTO_MAP), {"audio-classification": dict(PIPELINE)}
    network = MMERForEmotionRecognition(config)
    for target, model in zip(network.folds, fold_models.values()):
        target.load_state_dict(model.state_dict(), strict=True)
    return network.eval()


def recorded_asr(asr: str | None, language: str | None) -> dict | None:
    """A transformers speech recogniser for mmer's missing transcripts, with the decoding
    settings the Python API would use (recorded, so the pipeline decodes alike): a Hub name as it
    is; a local folder as `local:<its name>`, bundled in the folder's asr/ (bundle_recogniser)."""
    if not asr:
        return None
    if asr_backend(asr) == "faster-whisper":
        raise ExportError(f"{asr}: a CTranslate2 Whisper, which the folder's pipeline cannot run without "
                          "faster-whisper; pass a transformers recogniser (e.g. openai/whisper-small, or the local "
                          "transformers Whisper it was converted from, which is bundled)")
    recogniser = Recogniser(asr, language, "cpu", backend="transformers")
    local = is_local_model(asr)
    return {"model": shared_name(asr) if local else recogniser.name, "bundled": ASR_DIR if local else None,
            "language": recogniser.language, "generate_kwargs": recogniser.settings}


def bundle_recogniser(source, folder: Path) -> None:
    """A local speech recogniser copied as it is into `folder` (the files links point to, as in a
    Hub cache's snapshot), but for NOT_BUNDLED; an ORIGIN_KEYS entry naming a folder of this
    machine (transformers 4 wrote the path a model was loaded from) becomes its shared name."""
    log.info("bundling the speech recogniser %s as %s/", source, folder.name)
    shutil.copytree(Path(str(source)).expanduser(), folder, ignore=shutil.ignore_patterns(*NOT_BUNDLED))
    for path in sorted(folder.glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        named = record if isinstance(record, dict) else {}
        origins = {key: shared_name(named[key]) for key in ORIGIN_KEYS
                   if isinstance(named.get(key), str) and named[key] and is_local_model(named[key])}
        if origins:
            atomic_write_text(path, json.dumps({**record, **origins}, indent=2, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------- writing the folder
def export_hf(run_dir, out, session=None, ensemble: bool = False, include_text_encoder: bool = False,
              asr: str | None = None, language: str | None = None, license_id: str = "other",
              overwrite: bool = False) -> dict:
    """Write the model folder `out` for `run_dir`'s fold `session` (default: its first) or all its
    folds (`ensemble`); -> the export record (also mmer_export.json in the folder)."""
    run_dir, out = Path(run_dir), Path(out)
    results = finished_results(run_dir)
    folds = chosen_folds(results, run_dir, session, ensemble)
    check_out(out, run_dir, overwrite)
    fold_models = {fold: next(iter(load_models(run_dir, session=fold).values())) for fold in folds}
    first = next(iter(fold_models.values()))
    text_encoder = None
    if first.uses_text:
        name = recorded_roberta(run_dir)
        if is_local_model(name) and not include_text_encoder:
            raise ExportError(f"{run_dir}: the run's text encoder is the local folder {name}, which no other machine "
                              "can load by name; pass --include_text_encoder to bundle it in the folder")
        tokenizer, encoder = checked_text_encoder(name, first.config.text_dim)
        text_encoder = {"name": shared_name(name), "config_sha256": encoder_stamp(name)["config_sha256"],
                        "bundled": TEXT_ENCODER_DIR if include_text_encoder else None}
    asr_entry = recorded_asr(asr, language) if first.uses_text else None
    network = build_network(fold_models, folds, {"text_encoder": text_encoder, "asr": asr_entry})
    staging = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        network.save_pretrained(staging, safe_serialization=True)
        copy_models_package(staging)
        AutoFeatureExtractor.from_pretrained(first.config.wav2vec2).save_pretrained(staging)
        if first.has_ctc:
            ctc_tokenizer().save_pretrained(staging / CTC_TOKENIZER_DIR)
        if text_encoder and include_text_encoder:
            tokenizer.save_pretrained(staging / TEXT_ENCODER_DIR)
            encoder.save_pretrained(staging / TEXT_ENCODER_DIR, safe_serialization=True)
        if asr_entry and asr_entry["bundled"]:
            bundle_recogniser(asr, staging / ASR_DIR)
        classes = list(network.config.id2label.values())
        config = json.loads((run_dir / "config.json").read_text())
        atomic_write_text(staging / "README.md", model_card(shared_results(results), config, first.config.run, folds,
                                                            classes, license_id, text_encoder, asr_entry))
        record = {"mmer_format": network.config.mmer_format, "run": first.config.run, "folds": folds,
                  "run_folder": run_dir.resolve().name,
                  "classes": classes, "max_abs_diff_vs_run": check_folder(staging, fold_models),
                  "git_commit": git_commit(), "versions": package_versions()}
        atomic_write_text(staging / EXPORT_RECORD, json.dumps(record, indent=1) + "\n")
        readable(staging)
        replace_out(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("wrote %s (%s, fold(s) %s)", out, first.config.run, ", ".join(folds))
    return record


def shared_results(results: dict) -> dict:
    """results.json as the model card reads it: the speech recogniser of the corpus's transcripts
    (data_prep/transcribe.py's record) by its shared name."""
    transcripts = results.get("transcripts") or {}
    if not (transcripts.get("asr") or {}).get("model"):
        return results
    asr = {**transcripts["asr"], "model": shared_name(transcripts["asr"]["model"])}
    return {**results, "transcripts": {**transcripts, "asr": asr}}


def copy_models_package(folder: Path) -> None:
    """The models/ package's modules, as they are: the code auto_map and the pipeline name."""
    for path in sorted(Path(models.__file__).parent.glob("*.py")):
        shutil.copyfile(path, folder / path.name)


def check_folder(folder: Path, fold_models: dict) -> float:
    """Load the folder back (its own config and weights) and score a probe with it and with the
    run's models: the largest difference in probabilities; over CHECK_TOLERANCE fails the export."""
    reloaded = MMERForEmotionRecognition.from_pretrained(folder).eval()
    generator = torch.Generator().manual_seed(0)
    audio = torch.randn(1, 16000, generator=generator)
    first = next(iter(fold_models.values()))
    text = {}
    if first.uses_text:
        features = torch.randn(1, 7, first.config.text_dim, generator=generator)
        text = {"text_features": features, "text_lengths": torch.tensor([7])}
    with torch.inference_mode():
        ours = reloaded(audio, **text)
        lengths = torch.tensor([audio.shape[1]])
        outputs = [m.classify(m.encode_audio(audio, lengths), text.get("text_features"), text.get("text_lengths"))
                   for m in fold_models.values()]
        theirs = torch.stack([scaled_probabilities(o.logits, m.calibration_temperature)
                              for o, m in zip(outputs, fold_models.values())]).mean(0)
        worst = float((ours.probabilities - theirs).abs().max())
        if hasattr(first, "attribute_head"):   # on the normalised scale, as the tolerance is meant
            low, high = first.config.attribute_range
            heads = torch.stack([m.attribute_head(o.embedding) for o, m in zip(outputs, fold_models.values())]).mean(0)
            worst = max(worst, float(((ours.attributes - low) / (high - low) - heads).abs().max()))
    if not np.isfinite(worst) or worst > CHECK_TOLERANCE:
        raise ExportError(f"{folder}: the reloaded folder's probabilities or attributes differ from the run's by "
                          f"{worst:.2e}; nothing was written")
    return worst


def readable(folder: Path) -> None:
    """Files of a folder meant for sharing are readable by all (some writers create them 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    for path in folder.rglob("*"):
        path.chmod((0o755 if path.is_dir() else 0o644) & ~mask)


def check_out(out: Path, run_dir: Path, overwrite: bool) -> None:
    """`out` must not hold the run (nothing an export reads is removed) nor, unless --overwrite,
    another non-empty folder."""
    if out.resolve() == run_dir.resolve() or run_dir.resolve().is_relative_to(out.resolve()):
        raise ExportError(f"{out}: would replace the run folder {run_dir} it exports; pass another --out")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ExportError(f"{out}: exists and is not empty; pass --overwrite to replace it, or another --out")


def replace_out(staging: Path, out: Path) -> None:
    if out.exists():
        if out.is_dir():
            shutil.rmtree(out)
        else:
            out.unlink()
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, out)


# ---------------------------------------------------------------- the Hub
def push(folder, repo_id: str, private: bool = False) -> str:
    """Upload the folder to the Hugging Face Hub as repo_id (created if needed); -> its URL. Fails
    at once, naming the fix, where the Hub cannot be reached (offline mode, no network)."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError
    folder = Path(folder)
    later = f"the folder is complete at {folder}: upload it from a machine with network (hf upload {repo_id} {folder})"
    if constants.HF_HUB_OFFLINE:
        raise ExportError(f"--push {repo_id}: HF_HUB_OFFLINE is set; {later}")
    endpoint = urlparse(constants.ENDPOINT)
    reached = reachable(endpoint.hostname, endpoint.port or 443, PUSH_TIMEOUT_S)
    if reached is not True:
        raise ExportError(f"--push {repo_id}: cannot reach {constants.ENDPOINT} ({reached}); {later}")
    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        return str(api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="MMER model folder"))
    except (HfHubHTTPError, OSError, ValueError) as err:
        raise ExportError(f"--push {repo_id}: the upload failed ({err}); {later}") from err


def reachable(host: str, port: int, timeout: float):
    """True, or why a TCP connection to host:port did not open within `timeout` seconds (name
    resolution included, which a socket's own timeout does not bound)."""
    outcome = ["no answer in %.0f s" % timeout]

    def attempt():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome[0] = True
        except OSError as err:
            outcome[0] = str(err)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout)
    return outcome[0]
