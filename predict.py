r"""Emotion of new recordings from the checkpoints run.py saved (or the published ones):
class probabilities (hap, ang, neu, sad; hap includes exc) and the predicted label per file.

    python predict.py --checkpoint_dir runs/mmer clip.wav [more.wav | folder/ | list.csv] \
        [--session N | --ensemble] [--transcript "..."] [--output predictions.json|.csv]

Audio is read, resampled, normalised and padded exactly as in training (utils.data).
mmer also reads the transcript: --transcript, a csv's transcript column, or else the
model's own CTC head transcribes the audio (greedy); RoBERTa embeds the text on the fly.
"""
import argparse
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm
from transformers.utils import logging as hf_logging

from data_prep.extract_roberta import TextFeatureError, agreed_text_encoder, embed_texts, load_text_encoder
from models import MODELS
from models.encoders import audio_input_spec, padding_is_exact
from utils.audio import AudioError
from utils.checkpoint import CheckpointError, find_checkpoints, restore_model
from utils.data import Collator, DataError, EmotionDataset, ExactBatchSampler, load_waves
from utils.device import autocast, check_precision, resolve_device
from utils.files import atomic_path, atomic_write_text
from utils.labels import CLASS_NAMES
from utils.text import greedy_decode, sentence_case

log = logging.getLogger("mmer.predict")
PATH_COLUMNS = ("path", "FileName")            # FileName: IEMOCAP id, the audio is <FileName>.wav
TRANSCRIPT_COLUMNS = ("transcript", "Sentences")
OUTPUT_SUFFIXES = (".json", ".csv")
DEFAULT_ROBERTA = "roberta-base"
MAX_NAMES_SHOWN = 5


class PredictError(ValueError):
    """Bad input to the prediction; the message names the file and the fix."""


# ---------------------------------------------------------------- inputs
def collect_inputs(sources, transcript: str | None = None, audio_dir=None) -> pd.DataFrame:
    """One row per recording: `path` and `transcript` (None where none was given). Sources are
    audio files, folders (their *.wav, sorted) or csv files (see read_input_csv)."""
    rows = [row for source in sources for row in read_source(Path(source), audio_dir)]
    if not rows:
        raise PredictError(f"no recordings in {[str(s) for s in sources]}; pass wav files, folders of *.wav "
                           "or a csv with a path column")
    if transcript is not None:
        if len(rows) != 1:
            raise PredictError(f"--transcript is the text of one recording, but {len(rows)} were given; put "
                               "the transcripts in a csv with columns path and transcript")
        rows = [(rows[0][0], transcript)]
    missing = [path for path, _ in rows if not Path(path).is_file()]
    if missing:
        raise PredictError(f"audio not found: {_some(missing)}; check the paths (a csv's paths are relative "
                           "to its folder, or to --audio_dir when given)")
    return pd.DataFrame(rows, columns=["path", "transcript"], dtype=object)


def read_source(source: Path, audio_dir=None) -> list[tuple]:
    """(path, transcript or None) for each recording a command-line input names."""
    if source.is_dir():
        wavs = sorted(source.glob("*.wav"))
        if not wavs:
            raise PredictError(f"{source}: no *.wav files in this folder")
        return [(str(path), None) for path in wavs]
    if source.suffix.lower() == ".csv":
        return read_input_csv(source, audio_dir)
    if not source.exists():
        raise PredictError(f"{source}: no such file or folder; pass wav files, folders of *.wav or a csv")
    return [(str(source), None)]


def read_input_csv(csv: Path, audio_dir=None) -> list[tuple]:
    """Rows of a csv with a `path` column (or IEMOCAP's `FileName`, the audio being
    <FileName>.wav), resolved against --audio_dir or else the csv's folder, and an optional
    `transcript` (or `Sentences`) column; an empty transcript cell counts as none."""
    if not csv.is_file():
        raise PredictError(f"{csv}: csv not found")
    table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    column = next((c for c in PATH_COLUMNS if c in table.columns), None)
    if column is None:
        raise PredictError(f"{csv}: no path column (found {list(table.columns)}); name the audio column 'path' "
                           "(a file path) or 'FileName' (an IEMOCAP id, read as <FileName>.wav)")
    base = Path(audio_dir) if audio_dir else csv.parent
    names = [n if column == "path" or n.lower().endswith(".wav") else f"{n}.wav" for n in table[column]]
    text_column = next((c for c in TRANSCRIPT_COLUMNS if c in table.columns), None)
    texts = table[text_column] if text_column else [""] * len(table)
    return [(str(base / Path(n).expanduser()), t if t.strip() else None) for n, t in zip(names, texts)]


def select_checkpoints(found: dict[str, Path], session=None, ensemble: bool = False) -> list[Path]:
    if ensemble:
        log.info("ensemble: averaging the probabilities of %d checkpoints (sessions %s)",
                 len(found), ", ".join(found))
        return list(found.values())
    if session is None:
        session = next(iter(found))
        if len(found) > 1:
            log.warning("using session %s's model %s, the first of %d (one per fold); --session N picks another, "
                        "--ensemble averages them all", session, found[session], len(found))
    if str(session) not in found:
        folder = next(iter(found.values())).parent
        raise CheckpointError(f"{folder}/{session}_model.pt not found; sessions there: {', '.join(found)}")
    return [found[str(session)]]


def load_models(checkpoint_dir, run=None, wav2vec2=None, session=None, ensemble=False, device="cpu") -> dict:
    """{checkpoint path: model in eval mode on `device`}: one session's model, or all with `ensemble`."""
    models = {}
    for path in select_checkpoints(find_checkpoints(checkpoint_dir), session, ensemble):
        model, _ = restore_model(path, run, wav2vec2)
        models[path] = model.to(device).eval()
    runs = {model.config.run for model in models.values()}
    if len(runs) > 1:
        raise CheckpointError(f"{checkpoint_dir}: the checkpoints hold different models ({', '.join(sorted(runs))}); "
                              "an ensemble averages the folds of one run, pick one with --session")
    return models


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
    return agreed_text_encoder(stamp, roberta, str(config), DEFAULT_ROBERTA)


# ---------------------------------------------------------------- inference
def batches(dataset: EmotionDataset, spec, batch_size: int, device, exact: bool, desc=None, progress=False):
    """run.py's evaluation batching, padding-exact (utils.data.ExactBatchSampler): each recording
    gets what it gets alone, whatever the batch size."""
    sampler = ExactBatchSampler(dataset.lengths(), batch_size, exact)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=Collator(spec))
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
        yield batch.to(device)


def recordings(waves, text=None) -> EmotionDataset:
    """Unlabelled items named by their position, so batch.names index the results."""
    n = len(waves)
    return EmotionDataset(range(n), waves, text_features=text)


def decode_ctc(ctc_logits: torch.Tensor, frame_lengths: torch.Tensor) -> list[str]:
    """Greedy CTC: argmax per valid frame, then utils.text.greedy_decode."""
    ids = ctc_logits.argmax(dim=-1).cpu()
    return [greedy_decode(row[:n].tolist()) for row, n in zip(ids, frame_lengths.tolist())]


@torch.inference_mode()
def transcribe(model, waves, spec, batch_size: int, device, precision: str) -> list[str]:
    """The model's CTC head on the audio alone (the text side does not touch it)."""
    heard = [""] * len(waves)
    for batch in batches(recordings(waves), spec, batch_size, device, exact_padding(model, spec)):
        with autocast(device, precision):
            frames, _, lengths = model.encode_audio(batch.input_values, batch.sample_lengths, batch.attention_mask)
            ctc_logits = model.ctc_head(frames)
        for row, text in zip(batch.names, decode_ctc(ctc_logits, lengths)):
            heard[row] = text
    return heard


@torch.inference_mode()
def run_model(model, dataset, spec, batch_size: int, device, precision: str, progress=False):
    """-> class probabilities [N, 4] and, for a model with a CTC head, its transcripts (dataset order)."""
    probs = np.zeros((len(dataset), len(CLASS_NAMES)))
    heard = [""] * len(dataset) if model.has_ctc else None
    for batch in batches(dataset, spec, batch_size, device, exact_padding(model, spec), desc="predict",
                         progress=progress):
        with autocast(device, precision):
            output = model(**batch.model_inputs())
        probs[batch.names] = torch.softmax(output.logits.float(), dim=-1).cpu().numpy()
        if heard is not None:
            for row, text in zip(batch.names, decode_ctc(output.ctc_logits, output.frame_lengths)):
                heard[row] = text
    return probs, heard


def exact_padding(model, spec) -> bool:
    return padding_is_exact(model.wav2vec2.config, spec)


def given_transcripts(inputs: pd.DataFrame) -> list:
    """The `transcript` column with blanks, NaN and a missing column read as None (not given)."""
    column = inputs["transcript"] if "transcript" in inputs else [None] * len(inputs)
    return [text if isinstance(text, str) and text.strip() else None for text in column]


def fill_transcripts(model, waves, transcripts, spec, batch_size, device, precision):
    """Given transcripts kept; the others transcribed by the model's CTC head, in sentence case
    like the transcripts the features were made from. -> texts, sources."""
    missing = [i for i, text in enumerate(transcripts) if text is None]
    sources = ["ctc" if text is None else "given" for text in transcripts]
    texts = list(transcripts)
    if missing:
        check_ctc_trained(model, len(missing))
        log.info("%d of %d recordings without a transcript: transcribing them with the CTC head of the model",
                 len(missing), len(texts))
        heard = transcribe(model, [waves[i] for i in missing], spec, batch_size, device, precision)
        for i, text in zip(missing, heard):
            texts[i] = sentence_case(text)
    return texts, sources


def check_ctc_trained(model, missing: int) -> None:
    """A model trained with --alpha 0 has a CTC head that no loss trained: its transcripts are noise."""
    if not model.config.alpha:
        raise PredictError(f"{missing} recording(s) have no transcript, and this model was trained with alpha 0, so "
                           "its CTC head is untrained and cannot transcribe them; pass --transcript, or a csv with a "
                           "transcript column")


def load_checked_text_encoder(roberta: str, text_dim: int, device):
    """RoBERTa for mmer's text, loaded before any audio work so a wrong one fails at once."""
    tokenizer, encoder = load_text_encoder(roberta, device)
    if encoder.config.hidden_size != text_dim:
        raise PredictError(f"{roberta}: gives {encoder.config.hidden_size}-dim features but the checkpoint reads "
                           f"{text_dim}-dim ones; pass --roberta the text encoder the run was trained with")
    return tokenizer, encoder


def default_batch_size(device: torch.device) -> int:
    """Up to 8 recordings per forward pass on a GPU; 1 on a CPU, where batching buys no
    parallelism (wav2vec2-base, 2 threads: 0.085 x real time alone against 0.11-0.24 in
    length-sorted batches of 8, docs/PERFORMANCE.md). Batches are padding-exact either way."""
    return 8 if device.type == "cuda" else 1


def predict_files(inputs: pd.DataFrame, models: dict, roberta: str = DEFAULT_ROBERTA, batch_size: int | None = None,
                  device="cpu", precision: str = "fp32", progress: bool = False, text_encoder=None) -> pd.DataFrame:
    """Probabilities (mean over `models`) and predicted label per row of `inputs` (columns
    path, transcript). mmer's missing transcripts come from the first model's CTC head.
    text_encoder: (tokenizer, model) of `roberta` already loaded, for callers that predict often."""
    device = torch.device(device)
    batch_size = batch_size or default_batch_size(device)
    first = next(iter(models.values()))
    spec = shared_input_spec(models)
    if first.uses_text and text_encoder is None:
        text_encoder = load_checked_text_encoder(roberta, first.config.text_dim, device)
    waves = load_waves(list(inputs["path"]), spec, progress)
    texts, sources, text = [""] * len(waves), ["none"] * len(waves), None
    if not first.uses_text and any(t is not None for t in given_transcripts(inputs)):
        log.warning("the %s model reads no text: the transcripts given are not used", first.config.run)
    if first.uses_text:
        texts, sources = fill_transcripts(first, waves, given_transcripts(inputs), spec, batch_size, device,
                                          precision)
        log.info("embedding %d transcripts with %s", len(texts), roberta)
        text = embed_texts(texts, *text_encoder, batch_size=batch_size, names=list(inputs["path"]))
    dataset = recordings(waves, text)
    outputs = [run_model(model, dataset, spec, batch_size, device, precision, progress) for model in models.values()]
    probs = np.mean([p for p, _ in outputs], axis=0)
    return results_table(inputs["path"], probs, texts, sources, outputs[0][1])


def results_table(paths, probs: np.ndarray, texts, sources, heard) -> pd.DataFrame:
    table = pd.DataFrame({"file": list(paths), "predicted_label": [CLASS_NAMES[i] for i in probs.argmax(axis=1)]})
    for k, name in enumerate(CLASS_NAMES):
        table[f"prob_{name}"] = probs[:, k]
    table["transcript"] = texts            # the text mmer read ("" for audio-only models)
    table["transcript_source"] = sources   # given | ctc | none (audio-only model)
    table["ctc_transcript"] = heard if heard is not None else ""
    return table


# ---------------------------------------------------------------- output and command line
def write_output(table: pd.DataFrame, path: Path, info: dict) -> None:
    """csv: one row per file. json: {run info..., "predictions": [one object per file]}."""
    if path.suffix.lower() == ".csv":
        with atomic_path(path, suffix=".csv") as tmp:
            table.to_csv(tmp, index=False, float_format="%.6f")
    else:
        payload = {**info, "class_names": list(CLASS_NAMES), "predictions": table.to_dict(orient="records")}
        atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
    log.info("wrote %d predictions to %s", len(table), path)


def format_predictions(table: pd.DataFrame) -> str:
    shown = table.drop(columns=["ctc_transcript"]).copy()
    shown["transcript"] = shown["transcript"].str.slice(0, 40)
    return shown.to_string(index=False, float_format=lambda v: f"{v:.3f}")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", help="wav files, folders (their *.wav) or csv files with a path "
                                             "(or FileName) column and an optional transcript (or Sentences) column")
    p.add_argument("--checkpoint_dir", required=True, help="folder of <session>_model.pt files")
    p.add_argument("--run", choices=list(MODELS), default=None,
                   help="which variant; read from our checkpoints, needed for the published ones")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--session", help="use <session>_model.pt (default: the first found)")
    which.add_argument("--ensemble", action="store_true", help="average the probabilities of all checkpoints")
    p.add_argument("--transcript", help="mmer: the transcript of the one recording given")
    p.add_argument("--audio_dir", help="folder the csv's paths are relative to (default: the csv's folder)")
    p.add_argument("--roberta", help="text encoder for mmer (default: the one recorded in <checkpoint_dir>/config.json, "
                                     f"else {DEFAULT_ROBERTA}); refused when it contradicts the record")
    p.add_argument("--wav2vec2", help="speech encoder architecture (default: the checkpoint's; needed for the "
                                      "published ones)")
    p.add_argument("--output", type=Path, help="write the predictions to a .json or .csv file")
    p.add_argument("--batch_size", type=int,
                   help="at most this many recordings per forward pass (default: 8 on GPU, 1 on CPU, the fastest "
                        "there). Results do not depend on it: encoders without an attention mask (wav2vec2-base) "
                        "batch only recordings of equal length, so nothing they see is padded")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="auto: bf16 autocast on GPU, fp32 on CPU; bf16 on a CPU with AVX512-BF16/AMX is about "
                        "2x faster (logits within ~1e-2 of fp32)")
    args = p.parse_args(argv)
    if args.output is not None and args.output.suffix.lower() not in OUTPUT_SUFFIXES:
        p.error(f"--output {args.output}: give a .json or .csv file name")
    if args.batch_size is not None and args.batch_size < 1:
        p.error("--batch_size must be at least 1")
    return args


def run_prediction(args: argparse.Namespace) -> tuple[pd.DataFrame, dict]:
    try:
        device = resolve_device(args.device)
        check_precision(device, args.precision)
    except ValueError as err:
        raise PredictError(str(err)) from err
    inputs = collect_inputs(args.inputs, args.transcript, args.audio_dir)
    models = load_models(args.checkpoint_dir, args.run, args.wav2vec2, args.session, args.ensemble, device)
    try:
        roberta = recorded_roberta(args.checkpoint_dir, args.roberta)
    except TextFeatureError as err:
        raise PredictError(str(err)) from err
    batch_size = args.batch_size or default_batch_size(device)
    with logging_redirect_tqdm():
        table = predict_files(inputs, models, roberta, batch_size, device, args.precision,
                              progress=len(inputs) > batch_size)
    info = {"run": next(iter(models.values())).config.run, "checkpoints": [str(p) for p in models],
            "ensemble": len(models) > 1}
    return table, info


def main(argv=None) -> pd.DataFrame:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    hf_logging.disable_progress_bar()
    try:
        table, info = run_prediction(args)
        if args.output is not None:
            write_output(table, args.output, info)
    except (PredictError, AudioError, CheckpointError, DataError, TextFeatureError, OSError) as err:
        raise SystemExit(f"error: {err}") from err
    print(format_predictions(table))
    return table


def _some(names) -> str:
    names = [str(n) for n in names]
    more = f" ... ({len(names) - MAX_NAMES_SHOWN} more)" if len(names) > MAX_NAMES_SHOWN else ""
    return ", ".join(names[:MAX_NAMES_SHOWN]) + more


if __name__ == "__main__":
    main()
