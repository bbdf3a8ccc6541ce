"""A corpus table's transcription (data_prep/transcribe.py is its command line): fills its column
`transcript` with a speech recogniser of dataio/asr.py, batched by length on CPU or GPU, and records
the model, its cost and its WER in `<stem>.asr.json`.

Resumable: each finished batch is appended to `<stem>.transcribe.jsonl` beside the table (a
first line naming model, language and decoding, then one {"FileName", "transcript"} line per
utterance), so a killed run goes on where it stopped. The file is kept as the record of what was
transcribed: a rerun with the same settings only transcribes rows it lacks (new ones), one with
another model or language is refused unless overwrite, which redoes everything.

Sharded: under torchrun the one-process batches are dealt out whole (batch k to process k mod N),
each process appending to `<stem>.transcribe.rank<r>.jsonl`; when all have finished, rank 0 merges
them into the one sidecar and writes the table: the same files as one process. A killed launch
resumes from its shards with any number of processes."""
import json
import logging
import time
from pathlib import Path

import pandas as pd
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from dataio.asr import (DEFAULT_ASR, TranscribeError, generate_kwargs, load_recogniser, model_stamp, recognise,
                        word_error_rate)
from dataio.audio import AudioError, audio_info, read_audio
from dataio.corpus import audio_paths, read_listing
from utils import distributed
from utils.cli import some
from utils.files import atomic_path, atomic_write_text

log = logging.getLogger(__name__)
COLUMN = "transcript"
REFERENCE_COLUMN = "Sentences"


# ---- the table and its audio -----------------------------------------------------------------

def read_table(csv) -> pd.DataFrame:
    """The table to transcribe (corpus.read_listing), every value as written."""
    return read_listing(csv, TranscribeError)


def default_audio_dir(csv) -> Path:
    """`audio/` beside the table when it exists (as iemocap_prep.py writes it), else the table's folder."""
    beside = Path(csv).parent / "audio"
    return beside if beside.is_dir() else Path(csv).parent


def audio_durations(paths, csv) -> list[float]:
    """Seconds of each file, from its header; every missing, unreadable or empty file is
    reported at once, by name, before any model is loaded."""
    durations, problems = [], []
    for path in paths:
        if not path.is_file():
            problems.append(f"{path} (missing)")
            continue
        try:
            info = audio_info(path)
        except AudioError as err:
            problems.append(f"{path} (unreadable: {str(err).split(': ', 1)[-1]})")
            continue
        if info.frames == 0:
            problems.append(f"{path} (no samples)")
        durations.append(info.frames / info.samplerate)
    if problems:
        raise TranscribeError(
            f"{csv}: {len(problems)} audio file(s) missing or unusable: {some(problems)}. "
            "Fix --audio_dir (default: audio/ beside the table, else its folder) or the table's path / FileName"
        )
    return durations


def length_batches(durations, todo, batch_size: int) -> list[list[int]]:
    """Row indices in batches of similar length, longest first, so each pads little and an
    out-of-memory shows at once."""
    order = sorted(todo, key=lambda i: -durations[i])
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


# ---- the sidecar: finished transcripts, batch by batch ----------------------------------------

def sidecar_path(csv) -> Path:
    return Path(csv).with_name(f"{Path(csv).stem}.transcribe.jsonl")


def record_path(csv) -> Path:
    return Path(csv).with_name(f"{Path(csv).stem}.asr.json")


def read_sidecar(path: Path, stamp: dict, overwrite: bool) -> dict[str, str]:
    """Transcripts of an earlier run with the same stamp, by FileName. A line cut short by a
    kill is dropped; another model's or language's transcripts are refused, not mixed."""
    if overwrite or not path.is_file():
        path.unlink(missing_ok=True)
        return {}
    lines = path.read_text(encoding="utf-8").splitlines()
    try:
        old = json.loads(lines[0])
    except (IndexError, json.JSONDecodeError):
        log.warning("%s: no readable first line, starting afresh", path)
        path.unlink()
        return {}
    keys = ("model", "config_sha256", "language", "num_beams", "backend", "compute_type")
    if {key: old.get(key) for key in keys} != {key: stamp.get(key) for key in keys}:
        raise TranscribeError(
            f"{path}: holds transcripts of {old.get('model')} (language {old.get('language')}, "
            f"beams {old.get('num_beams')}), not of {stamp['model']} (language {stamp['language']}, "
            f"beams {stamp['num_beams']}); pass --overwrite to redo them all, or rerun with those settings"
        )
    done = {}
    for line_number, line in enumerate(lines[1:], start=2):
        try:
            entry = json.loads(line)
            done[entry["FileName"]] = entry[COLUMN]
        except (json.JSONDecodeError, KeyError, TypeError):
            log.warning("%s: line %d unreadable (cut short by a kill?), redoing that utterance", path, line_number)
    return done


def shard_path(csv, rank: int) -> Path:
    """One torchrun process's sidecar: merged into the table's when every process has finished."""
    return Path(csv).with_name(f"{Path(csv).stem}.transcribe.rank{rank}.jsonl")


def shard_paths(csv) -> list[Path]:
    return sorted(Path(csv).parent.glob(f"{Path(csv).stem}.transcribe.rank*.jsonl"))


def merge_sidecars(csv, stamp: dict, transcripts: dict) -> None:
    """The table's sidecar rewritten with every transcript (in table order), then the shards removed."""
    if not shard_paths(csv):
        return
    lines = [json.dumps(stamp)] + [json.dumps({"FileName": name, COLUMN: text}, ensure_ascii=False)
                                   for name, text in transcripts.items()]
    atomic_write_text(sidecar_path(csv), "\n".join(lines) + "\n")
    for path in shard_paths(csv):
        path.unlink()


def append_sidecar(path: Path, stamp: dict, names, texts) -> None:
    """Append one batch; flushed, so a kill keeps every finished batch."""
    new = not path.is_file()
    with open(path, "a", encoding="utf-8") as handle:
        if new:
            handle.write(json.dumps(stamp) + "\n")
        for name, text in zip(names, texts):
            handle.write(json.dumps({"FileName": name, COLUMN: text}, ensure_ascii=False) + "\n")
        handle.flush()


# ---- the whole job ---------------------------------------------------------------------------

def transcribe_table(csv, asr=DEFAULT_ASR, language=None, audio_dir=None, batch_size: int = 8,
                     device="auto", overwrite: bool = False, num_beams: int = 1, backend: str = "auto") -> dict:
    """Fill `transcript` in the table at `csv` (every other column and the row order unchanged),
    write `<stem>.asr.json`, and return that summary."""
    csv = Path(csv)
    table = read_table(csv)
    audio_dir = Path(audio_dir) if audio_dir is not None else default_audio_dir(csv)
    paths = audio_paths(table, audio_dir)
    durations = audio_durations(paths, csv)
    try:  # before the slow load, so a bad --device fails at once; joins torchrun's processes
        device = distributed.init_distributed(str(device))
    except ValueError as err:
        raise TranscribeError(str(err)) from err
    stamp = model_stamp(asr, language, num_beams, backend, device)
    sidecar, world, rank = sidecar_path(csv), distributed.world_size(), distributed.rank()
    if overwrite and rank == 0:
        for path in [sidecar, *shard_paths(csv)]:
            path.unlink(missing_ok=True)
    distributed.barrier()
    done = {}
    for path in [sidecar, *shard_paths(csv)]:   # a killed run's shards too, whatever its process count
        done.update(read_sidecar(path, stamp, overwrite=False))
    names = table["FileName"].tolist()
    todo = [i for i, name in enumerate(names) if name not in done]
    log.info("%d of %d utterances already transcribed in %s", len(names) - len(todo), len(names), sidecar)
    # the single process's batches, dealt out whole: each utterance is decoded in the same batch
    mine = [batch for k, batch in enumerate(length_batches(durations, todo, batch_size)) if k % world == rank]
    seconds = 0.0
    if mine:
        recogniser = load_recogniser(asr, device, stamp)
        started = time.perf_counter()
        run_batches(recogniser, stamp, sidecar if world == 1 else shard_path(csv, rank), paths, names, mine,
                    batch_size)
        seconds = time.perf_counter() - started
    seconds = distributed.sum_floats([seconds], device)[0]
    shares = distributed.gather_objects(sum(map(len, mine)))   # utterances each process transcribed
    if rank != 0:
        distributed.barrier()
        return {}
    for path in shard_paths(csv):
        done.update(read_sidecar(path, stamp, overwrite=False))
    done.update(read_sidecar(sidecar, stamp, overwrite=False))
    merge_sidecars(csv, stamp, {name: done[name] for name in names if name in done})
    distributed.barrier()
    transcripts = [done[name] for name in names]
    if COLUMN in table.columns and table[COLUMN].tolist() != transcripts:
        log.info("%s: replacing its %s column", csv, COLUMN)
    table[COLUMN] = transcripts
    write_table(table, csv)
    summary = {**summarise(table, stamp, durations, todo, seconds, device), "transcribed_per_process": shares}
    atomic_write_text(record_path(csv), json.dumps(summary, indent=1) + "\n")
    return summary


def run_batches(recogniser, stamp, sidecar, paths, names, batches, batch_size) -> None:
    """Transcribe the row batches, appending each to the sidecar as it finishes."""
    sampling_rate = recogniser.feature_extractor.sampling_rate
    settings = generate_kwargs(recogniser, stamp)
    with logging_redirect_tqdm(), tqdm(total=sum(map(len, batches)), desc="ASR", unit="utt",
                                       disable=not distributed.is_main()) as bar:
        for batch in batches:
            try:
                waves = [read_audio(paths[i], sampling_rate) for i in batch]
            except AudioError as err:
                raise TranscribeError(str(err)) from err
            texts = recognise(recogniser, waves, sampling_rate, settings, batch_size)
            append_sidecar(sidecar, stamp, [names[i] for i in batch], texts)
            bar.update(len(batch))


def write_table(table: pd.DataFrame, csv: Path) -> None:
    """Atomically; an unnamed leading index column (upstream's files) keeps its empty header."""
    header = ["" if str(column).startswith("Unnamed: ") else column for column in table.columns]
    with atomic_path(csv, suffix=".csv") as tmp:
        table.to_csv(tmp, index=False, header=header)


def summarise(table, stamp, durations, todo, seconds: float, device) -> dict:
    """The record: model and settings, corpus size, this run's cost (`seconds`: reading and
    recognising the utterances it transcribed, model loading excluded; per audio hour of those),
    and the WER of the whole column against the table's reference transcripts where it has them."""
    transcribed_audio = sum(durations[i] for i in todo)
    wer, scored = (word_error_rate(table[REFERENCE_COLUMN], table[COLUMN])
                   if REFERENCE_COLUMN in table.columns else (None, 0))
    return {
        "model": stamp["model"], "language": stamp["language"], "num_beams": stamp["num_beams"],
        "config_sha256": stamp["config_sha256"], "device": str(device),
        "backend": stamp.get("backend", "transformers"), "compute_type": stamp.get("compute_type"),
        "utterances": len(table), "audio_seconds": round(sum(durations), 3),
        "transcribed": len(todo), "transcribed_audio_seconds": round(transcribed_audio, 3),
        "seconds": round(seconds, 3),
        "time_per_audio_hour_s": round(seconds / transcribed_audio * 3600, 1) if transcribed_audio else None,
        "wer": None if wer is None else round(wer, 4), "wer_utterances": scored,
        "wer_reference": REFERENCE_COLUMN if wer is not None else None,
    }


def summary_line(summary: dict) -> str:
    wer = "no reference" if summary["wer"] is None else f"{100 * summary['wer']:.1f} %"
    cost = ("" if summary["time_per_audio_hour_s"] is None
            else f", {summary['time_per_audio_hour_s']:.0f} s per audio hour")
    return (f"{summary['utterances']} utterances ({summary['audio_seconds'] / 3600:.2f} h of audio), "
            f"{summary['transcribed']} transcribed now in {summary['seconds']:.1f} s{cost} "
            f"with {summary['model']}; WER vs {REFERENCE_COLUMN}: {wer}")
