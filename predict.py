r"""Emotion of new recordings from the checkpoints run.py saved (or the published ones):
class probabilities (hap, ang, neu, sad; hap includes exc) and the predicted label per file, and
for a run trained with --task dimensional or both its attributes (one column each, e.g. arousal,
valence, dominance, in the corpus's rating units as run.py's pred_<attribute>; under --task
dimensional, whose classifier was never trained, the attributes alone).

    python predict.py --checkpoint_dir runs/mmer clip.wav [more.flac | folder/ | list.csv] \
        [--session N | --ensemble] [--transcript "..."] [--output predictions.json|.csv] [--skip_bad]
    python predict.py --backend onnxruntime --onnx_dir exported/mmer clip.wav [...]   # export.py's graphs
    python predict.py --model_dir shared/mmer clip.wav [...]        # a folder of export.py --format hf

The command line over inference.EmotionRecognizer (the Python API). Audio is read, resampled,
normalised and scored exactly as in training's evaluation. mmer also reads the transcript:
--transcript, a csv's transcript column (the one the run's text features were made from, as
its config.json records, else transcript, then Sentences; --text_column picks another, and
the log says which and why), or else the model's own CTC head transcribes the audio (greedy;
a recording where it heard no words is said once, by name); RoBERTa embeds the text on the
fly. A csv with a Label column also gets its accuracy (WA), UA, macro-F1 and confusion matrix.
Every input, label and the --output are checked before any compute: all problems are named
at once, or --skip_bad predicts the rest and lists the ones it skipped. `--backend onnxruntime`
runs a run exported by export.py (graphs and text encoder) with onnxruntime on the CPU instead
of PyTorch; the probabilities agree within 1e-4 (the tests; about 1e-7 measured on tiny models).
"""
import argparse
import json
import logging
import os
from pathlib import Path

from utils.threads import before_torch, configure_threads

before_torch()  # OpenMP reads its waiting policy when torch loads it (utils/threads.py)

import pandas as pd  # noqa: E402
from tqdm.contrib.logging import logging_redirect_tqdm
from transformers.utils import logging as hf_logging

from dataio.asr import ASR_BACKENDS
from dataio.dataset import read_text_feature
from inference.prediction import predictions_table
from inference.inputs import (check_recordings, collect_inputs, drop_bad, feature_paths, label_problems,  # noqa: F401
                              read_inputs, transcript_column)
from inference.recognizer import EmotionRecognizer, UnusableInputs
from inference.transcripts import recorded_text_column
from inference.windows import Windows, plot_timeline, timeline_table
from models import MODELS
from models.errors import MMERError
from training.metrics import emotion_metrics
from utils.cli import HelpFormatter, Parser, add_number
from utils.files import atomic_path, atomic_write_text

log = logging.getLogger("mmer.predict")
OUTPUT_SUFFIXES = (".json", ".csv")
BACKENDS = ("torch", "onnxruntime")


# ---------------------------------------------------------------- prediction
def predict_files(inputs: pd.DataFrame, recognizer: EmotionRecognizer, progress: bool = False) -> pd.DataFrame:
    """One row per recording of `inputs` (columns path and, optionally, transcript)."""
    return predictions_table(predict_recordings(inputs, recognizer, progress))


def predict_recordings(inputs: pd.DataFrame, recognizer: EmotionRecognizer, progress: bool = False,
                       features=None) -> list:
    transcripts = inputs["transcript"] if "transcript" in inputs else None
    return recognizer.predict_many(list(inputs["path"]), transcripts, progress=progress, text_features=features)


def text_features(inputs: pd.DataFrame, folder) -> list:
    """--data_path_roberta: each recording's features ([1, T, H] or [T, H]; check_recordings found them all)."""
    return [read_text_feature(p) for p in feature_paths(inputs, folder)]


def write_timelines(predictions, output: Path | None, attribute_range=None) -> None:
    """Long recordings: each one's windows, as a csv and a plot beside --output
    (`<output stem>_timelines/<recording>.csv|png`), or printed when there is no --output."""
    for prediction in (p for p in predictions if p.windows):
        table = timeline_table(prediction)
        if output is None:
            print(f"{prediction.source}: {len(table)} windows")
            print(table.drop(columns=["transcript"]).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
            continue
        folder = output.parent / f"{output.stem}_timelines"
        stem = Path(prediction.source).stem
        with atomic_path(folder / f"{stem}.csv", suffix=".csv") as tmp:
            table.to_csv(tmp, index=False, float_format="%.6f")
        plot_timeline(prediction, folder / f"{stem}.png", attribute_range)
        log.info("%s: %d windows, timeline in %s", prediction.source, len(table), folder / f"{stem}.csv")


def labelled_metrics(inputs: pd.DataFrame, table: pd.DataFrame, label_set) -> dict | None:
    """WA, UA, macro-F1 and the confusion matrix when every recording has a label (the run's
    label set reads it: IEMOCAP's counts exc as hap); recordings whose label it leaves out are
    not counted. None for a model that predicts no class (--task dimensional)."""
    if "label" not in inputs or inputs["label"].isna().all() or "predicted_label" not in table:
        return None
    problems = label_problems(inputs, label_set)
    if problems:
        raise UnusableInputs(list(problems.values()))
    labels = inputs["label"]
    kept = [i for i, label in enumerate(labels) if label_set.index(label) is not None]
    y_true = [label_set.index(labels.iloc[i]) for i in kept]
    y_pred = [label_set.classes.index(table["predicted_label"].iloc[i]) for i in kept]
    return emotion_metrics(y_true, y_pred, len(label_set.classes))


def format_metrics(metrics: dict, classes: list[str]) -> str:
    confusion = pd.DataFrame(metrics["confusion"], index=[f"true {c}" for c in classes], columns=classes)
    return (f"{metrics['n']} labelled recordings: WA {100 * metrics['wa']:.2f} %, UA {100 * metrics['ua']:.2f} %, "
            f"macro-F1 {100 * metrics['macro_f1']:.2f} % (WA = accuracy, UA = mean per-class recall)\n"
            + confusion.to_string())


# ---------------------------------------------------------------- output and command line
def output_problem(path: Path | None) -> str | None:
    """What keeps --output (and the long recordings' timelines beside it) from being written,
    found before any model is loaded; None: nothing."""
    if path is None:
        return None
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if path.is_dir() or not folder.is_dir() or not os.access(folder, os.W_OK):
        why = "it is a folder" if path.is_dir() else f"{folder} is not a writable folder"
        return f"--output {path}: cannot write there ({why}); give a .json or .csv path in a folder you can write"
    timelines = path.parent / f"{path.stem}_timelines"
    if timelines.exists() and not timelines.is_dir():
        return (f"--output {path}: {timelines}, where long recordings' timelines go, is a file; move it or "
                "give another --output")
    return None


def write_output(table: pd.DataFrame, path: Path, info: dict) -> None:
    """csv: one row per file. json: {run info..., "predictions": [one object per file]}."""
    if path.suffix.lower() == ".csv":
        with atomic_path(path, suffix=".csv") as tmp:
            table.to_csv(tmp, index=False, float_format="%.6f")
    else:
        payload = {**info, "predictions": table.to_dict(orient="records")}
        atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
    log.info("wrote %d predictions to %s", len(table), path)


def format_predictions(table: pd.DataFrame) -> str:
    shown = table.drop(columns=["ctc_transcript"] + (["windows"] if not table["windows"].any() else [])).copy()
    shown["transcript"] = shown["transcript"].str.slice(0, 40)
    return shown.to_string(index=False, float_format=lambda v: f"{v:.3f}")


def parse_args(argv=None) -> argparse.Namespace:
    p = Parser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("inputs", nargs="+", help="audio files, folders (their audio files) or csv files with a path "
                                             "(or FileName) column, optional transcript (or Sentences) and Label")
    p.add_argument("--checkpoint_dir", help="folder of <session>_model.pt files (--backend torch, required there)")
    p.add_argument("--model_dir", help="instead of --checkpoint_dir: a shared model folder (export.py --format hf), "
                                       "one fold or an ensemble, with its text encoder and recogniser recorded")
    p.add_argument("--backend", choices=BACKENDS, default="torch",
                   help="torch: the checkpoints in PyTorch; onnxruntime: export.py's graphs in --onnx_dir (CPU)")
    p.add_argument("--onnx_dir", help="--backend onnxruntime: the folder export.py wrote (manifest.json, "
                                      "<session>_model.onnx, ...)")
    p.add_argument("--run", choices=list(MODELS), default=None,
                   help="which variant; read from our checkpoints, needed for the published ones")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--session", help="use <session>_model.pt (default: the first found)")
    which.add_argument("--ensemble", action="store_true", help="average the probabilities of all checkpoints")
    p.add_argument("--transcript", help="mmer: the transcript of the one recording given")
    p.add_argument("--data_path_roberta", help="mmer: a folder of precomputed text features, <name>.npy per recording "
                                               "(<name>: the csv's FileName, else the file's stem), as run.py reads "
                                               "them; used instead of embedding transcripts (no text encoder loaded)")
    p.add_argument("--audio_dir", help="folder the csv's paths are relative to (default: the csv's folder)")
    p.add_argument("--text_column", help="mmer: the csv column of the transcripts (default: the column the run's "
                                         "text features were made from, recorded in its config.json, else "
                                         "transcript, then Sentences); another than the recorded one is said")
    p.add_argument("--skip_bad", action="store_true",
                   help="predict the usable inputs and list the others (missing, unreadable, too short, a bad "
                        "Label), instead of stopping; without it every problem is named and nothing is predicted")
    p.add_argument("--roberta", help="text encoder for mmer (default: the one recorded in <checkpoint_dir>/config.json, "
                                     "else roberta-base); refused when it contradicts the record")
    p.add_argument("--wav2vec2", help="speech encoder architecture (default: the checkpoint's; needed for the "
                                      "published ones)")
    p.add_argument("--asr", help="mmer: a speech recogniser for recordings without a transcript, instead of the "
                                 "model's own CTC head (better on real data): a transformers one (e.g. "
                                 "openai/whisper-small) or a CTranslate2 Whisper folder (faster-whisper)")
    p.add_argument("--asr_backend", choices=ASR_BACKENDS, default="auto",
                   help="auto: faster-whisper for a folder with model.bin (CTranslate2), else transformers")
    p.add_argument("--language", help="--asr: the language for a multilingual Whisper (e.g. en, french)")
    p.add_argument("--output", type=Path, help="write the predictions to a .json or .csv file")
    add_number(p, "--batch_size", int, 1, default=None,
               help="at most this many recordings per forward pass (default: 8 on GPU, 1 on CPU, the fastest "
                    "there). Results do not depend on it: encoders without an attention mask (wav2vec2-base) "
                    "batch only recordings of equal length, so nothing they see is padded")
    add_number(p, "--long_seconds", float, 1, default=30.0,
               help="recordings longer than this are scored in windows, with a timeline and a summary")
    add_number(p, "--window_seconds", float, 0.5, default=6.0, help="length of a long recording's windows")
    add_number(p, "--hop_seconds", float, 0.1, default=3.0, help="one window every this many seconds")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    add_number(p, "--threads", int, 1, default=None,
               help="torch CPU threads (default: the CPUs this process may use, from its affinity and cgroup quota)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="auto and fp32: fp32 (exact: the probabilities run.py wrote); bf16: bf16 autocast, about "
                        "2x faster on a GPU or a CPU with AVX512-BF16/AMX (logits within ~1e-2 of fp32)")
    args = p.parse_args(argv)
    if args.output is not None and args.output.suffix.lower() not in OUTPUT_SUFFIXES:
        p.error(f"--output {args.output}: give a .json or .csv file name")
    if args.hop_seconds > args.window_seconds:
        p.error(f"--hop_seconds {args.hop_seconds} is longer than --window_seconds {args.window_seconds}: the windows "
                "would leave parts of the recording unheard")
    refusal = backend_refusal(args)
    if refusal:
        p.error(refusal)
    return args


def backend_refusal(args: argparse.Namespace) -> str | None:
    """Flags that do not go with the backend, in words (None: they all do)."""
    if args.backend == "torch":
        if args.onnx_dir:
            return "--onnx_dir is read by --backend onnxruntime; add it, or give --checkpoint_dir instead"
        if args.model_dir:
            given = [flag for flag, value in (("--checkpoint_dir", args.checkpoint_dir), ("--run", args.run),
                                              ("--wav2vec2", args.wav2vec2), ("--session", args.session),
                                              ("--ensemble", args.ensemble)) if value]
            return f"--model_dir holds its model(s) and settings; drop {', '.join(given)}" if given else None
        return None if args.checkpoint_dir else ("--checkpoint_dir is required (or --model_dir DIR, or --backend "
                                                 "onnxruntime --onnx_dir DIR)")
    if not args.onnx_dir:
        return "--backend onnxruntime needs --onnx_dir, the folder export.py wrote (python export.py RUN_DIR --out DIR)"
    given = [flag for flag, value in (("--checkpoint_dir", args.checkpoint_dir), ("--run", args.run),
                                      ("--wav2vec2", args.wav2vec2)) if value]
    if given:
        return f"--backend onnxruntime reads everything from --onnx_dir's manifest.json; drop {', '.join(given)}"
    if args.device not in ("auto", "cpu") or args.precision == "bf16":
        return "--backend onnxruntime runs in fp32 on the CPU; drop --device/--precision, or use --backend torch"
    return None


def load_recognizer(args: argparse.Namespace) -> EmotionRecognizer:
    if args.backend == "onnxruntime":
        return EmotionRecognizer.from_onnx(args.onnx_dir, args.session, args.ensemble, args.roberta, args.batch_size,
                                           args.asr, args.language)
    if args.model_dir:
        return EmotionRecognizer.from_pretrained(args.model_dir, args.roberta, args.device, args.precision,
                                                 args.batch_size, args.asr, args.language, asr_backend=args.asr_backend,
                                                 embed_text=not args.data_path_roberta)
    return EmotionRecognizer.from_run(args.checkpoint_dir, args.session, args.ensemble, args.run, args.wav2vec2,
                                      args.roberta, args.device, args.precision, args.batch_size, args.asr,
                                      args.language, embed_text=not args.data_path_roberta, asr_backend=args.asr_backend)


def run_prediction(args: argparse.Namespace) -> tuple[pd.DataFrame, dict]:
    """Every input and the output checked first (all problems named at once, or with --skip_bad
    the bad inputs left out), then the predictions."""
    configure_threads(args.threads)
    recorded = recorded_text_column(args.checkpoint_dir) if args.backend == "torch" and args.checkpoint_dir else None
    inputs, problems = read_inputs(args.inputs, args.transcript, args.audio_dir, recorded, args.text_column)
    output = output_problem(args.output)
    if output:
        raise UnusableInputs([output, *problems.messages()])  # before any model is loaded
    recognizer = load_recognizer(args)
    recognizer.windows = Windows(args.window_seconds, args.hop_seconds, args.long_seconds)
    check_recordings(inputs, recognizer, problems, args.data_path_roberta)
    inputs, skipped = drop_bad(inputs, problems, args.skip_bad)
    features = text_features(inputs, args.data_path_roberta) if args.data_path_roberta else None
    with logging_redirect_tqdm():
        predictions = predict_recordings(inputs, recognizer, progress=len(inputs) > recognizer.batch_size,
                                         features=features)
    table = predictions_table(predictions)
    write_timelines(predictions, args.output, recognizer.attribute_range)
    info = {"run": recognizer.run, "backend": args.backend, "checkpoints": [str(p) for p in recognizer.models],
            "ensemble": len(recognizer.models) > 1, "class_names": recognizer.classes if recognizer.predicts_classes
            else None}
    if recognizer.attributes:
        info.update(attributes=recognizer.attributes, attribute_range=recognizer.attribute_range)
    metrics = labelled_metrics(inputs, table, recognizer.label_set)
    if metrics is not None:
        info["metrics"] = metrics
    if skipped:
        info["skipped"] = skipped
    return table, info


def main(argv=None) -> pd.DataFrame:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    hf_logging.disable_progress_bar()
    try:
        table, info = run_prediction(args)
        if args.output is not None:
            write_output(table, args.output, info)
    except (MMERError, OSError) as err:
        raise SystemExit(f"error: {err}") from err
    print(format_predictions(table))
    if "metrics" in info:
        print(format_metrics(info["metrics"], info["class_names"]))
    if "skipped" in info:
        print(f"skipped {len(info['skipped'])} input(s) (--skip_bad):")
        print("\n".join(f"  {item['problem']}" for item in info["skipped"]))
    return table




if __name__ == "__main__":
    main()
