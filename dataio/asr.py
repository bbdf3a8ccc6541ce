"""Transcripts from a speech recogniser: fills the column `transcript` of a corpus table
(docs/CORPUS.md) with any transformers speech-recognition model (Whisper, wav2vec2-CTC, ...) or a
CTranslate2 Whisper through faster-whisper (int8 on a CPU), batched by length on CPU or GPU, and records the model, its cost and its WER in `<stem>.asr.json`.

Resumable: each finished batch is appended to `<stem>.transcribe.jsonl` beside the table (a
first line naming model, language and decoding, then one {"FileName", "transcript"} line per
utterance), so a killed run goes on where it stopped. The file is kept as the record of what was
transcribed: a rerun with the same settings only transcribes rows it lacks (new ones), one with
another model or language is refused unless --overwrite, which redoes everything.

Sharded: `torchrun --nproc_per_node N data_prep/transcribe.py ...` deals the one-process batches out
whole (batch k to process k mod N), each process appending to `<stem>.transcribe.rank<r>.jsonl`;
when all have finished, rank 0 merges them into the one sidecar and writes the table: the same
files as one process. A killed launch resumes from its shards with any number of processes."""
import hashlib
import json
import logging
import re
import time
from pathlib import Path


import jiwer
import numpy as np
import pandas as pd
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm
from transformers import AutoConfig, GenerationConfig, pipeline
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CTC_MAPPING_NAMES,
    MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES,
    MODEL_FOR_TDT_MAPPING_NAMES,
)
from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

from dataio.corpus import audio_paths
from dataio.audio import AudioError, audio_info, read_audio
from utils.cli import some
from utils import distributed
from utils.files import atomic_path, atomic_write_text
from dataio.text import NON_SPEECH_TAG
from models.errors import MMERError

log = logging.getLogger(__name__)
DEFAULT_ASR = "openai/whisper-small"
COLUMN = "transcript"
REFERENCE_COLUMN = "Sentences"
LOAD_HINT = ("pass a local folder written by save_pretrained, or a hub name (e.g. openai/whisper-small) "
             "with network access (offline: set HF_HUB_OFFLINE=1 to use the local cache)")
# The heads the automatic-speech-recognition pipeline can run: CTC, transducer, encoder-decoder.
RECOGNISER_CLASSES = {
    *MODEL_FOR_CTC_MAPPING_NAMES.values(),
    *MODEL_FOR_TDT_MAPPING_NAMES.values(),
    *MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES.values(),
}


ASR_BACKENDS = ("auto", "transformers", "faster-whisper")
CT2_MODEL = "model.bin"              # what makes a folder a CTranslate2 model (faster-whisper's format)
WHISPER_MULTILINGUAL_VOCAB = 51865   # Whisper's vocabulary: 51864 tokens for the English-only `*.en` models


class TranscribeError(MMERError, ValueError):
    """Bad input to the transcription; the message names the file and the fix."""


def asr_backend(asr, backend: str = "auto") -> str:
    """transformers, or faster-whisper (CTranslate2) for a folder holding model.bin (auto)."""
    if backend not in ASR_BACKENDS:
        raise TranscribeError(f"--asr_backend {backend}: choose one of {', '.join(ASR_BACKENDS)}")
    if backend != "auto":
        return backend
    return "faster-whisper" if (Path(str(asr)).expanduser() / CT2_MODEL).is_file() else "transformers"


# ---- words: the normalisation behind the WER -------------------------------------------------

def normalise_words(text: str) -> str:
    """Text as compared for the WER: non-speech tags ([LAUGHTER], {LG}) dropped, lower-case,
    apostrophes removed ("It's" -> "its", so both sides agree however they spell contractions),
    other punctuation read as a word boundary, spaces collapsed."""
    spoken = NON_SPEECH_TAG.sub(" ", str(text)).lower().replace("'", "").replace("\u2019", "")
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]|_", " ", spoken)).strip()


def word_error_rate(references, hypotheses) -> tuple[float | None, int]:
    """Corpus WER (jiwer: all edits over all reference words) after `normalise_words`, and the
    number of utterances it covers: those whose reference keeps at least one word."""
    pairs = [(normalise_words(ref), normalise_words(hyp)) for ref, hyp in zip(references, hypotheses)]
    pairs = [(ref, hyp) for ref, hyp in pairs if ref]
    if not pairs:
        return None, 0
    return float(jiwer.wer([ref for ref, _ in pairs], [hyp for _, hyp in pairs])), len(pairs)


# ---- the table and its audio -----------------------------------------------------------------

def read_table(csv) -> pd.DataFrame:
    """Every column as text (an empty cell is ""), so the rewritten table keeps each value as written."""
    csv = Path(csv)
    if not csv.is_file():
        raise TranscribeError(f"{csv}: table not found; prepare the corpus first (docs/CORPUS.md) or fix --csv")
    table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    if "FileName" not in table.columns:
        raise TranscribeError(f"{csv}: no FileName column; it has {list(table.columns)}. "
                              "Every corpus table names its utterances in FileName (docs/CORPUS.md)")
    repeated = table["FileName"][table["FileName"].duplicated()].unique().tolist()
    if repeated:
        raise TranscribeError(f"{csv}: FileName repeated, each utterance needs its own: {some(repeated)}")
    return table


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


# ---- the recogniser --------------------------------------------------------------------------

def model_stamp(asr, language, num_beams: int, backend: str = "auto", device=None) -> dict:
    """What identifies the transcripts: the model (a local folder by its absolute path, with a
    digest of its config), the language (as Whisper's code) and the decoding (and, for
    faster-whisper, its backend and compute type). Read from the config alone, so a model that is
    no speech recogniser is refused before its weights load."""
    if asr_backend(asr, backend) == "faster-whisper":
        return ct2_stamp(asr, language, num_beams, device)
    source = str(asr)
    local = Path(source).expanduser()
    looks_local = local.exists() or source.startswith((".", "/", "~")) or source.count("/") > 1
    if looks_local and not (local / "config.json").is_file():
        raise TranscribeError(f"{source}: not a model folder (no config.json); {LOAD_HINT}")
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise TranscribeError(f"cannot load the config of {source!r} ({err}); {LOAD_HINT}") from err
    heads = set(config.architectures or [])
    if not heads & RECOGNISER_CLASSES:
        raise TranscribeError(
            f"{source}: a {config.model_type} model with head {sorted(heads) or 'none'} is not a speech recogniser; "
            "pass one with a CTC or speech-to-text head, e.g. openai/whisper-small or facebook/wav2vec2-base-960h"
        )
    digest = hashlib.sha256(config.to_json_string(use_diff=False).encode()).hexdigest()
    generates = bool(heads & set(MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES.values()))  # CTC, transducers: no beams
    return {"model": str(local.resolve()) if looks_local else source, "config_sha256": digest,
            "language": language_code(language, source, whisper_languages(source, config), config.model_type),
            "num_beams": num_beams if generates else None}


def ct2_stamp(asr, language, num_beams: int, device=None) -> dict:
    """model_stamp of a CTranslate2 Whisper folder (config.json, model.bin, vocabulary, tokenizer.json)."""
    folder = Path(str(asr)).expanduser()
    if not (folder / CT2_MODEL).is_file():
        raise TranscribeError(f"{asr}: not a CTranslate2 Whisper folder (no {CT2_MODEL}); convert a Whisper model with "
                              "ct2-transformers-converter --model openai/whisper-small --output_dir DIR --quantization "
                              "int8, or pass --asr_backend transformers")
    config = (folder / "config.json").read_bytes() if (folder / "config.json").is_file() else b""
    digest = hashlib.sha256(config + str((folder / CT2_MODEL).stat().st_size).encode()).hexdigest()
    vocabulary = next((folder / name for name in ("vocabulary.txt", "vocabulary.json") if (folder / name).is_file()), None)
    words = len(vocabulary.read_text(encoding="utf-8").splitlines()) if vocabulary and vocabulary.suffix == ".txt" else \
        len(json.loads(vocabulary.read_text(encoding="utf-8"))) if vocabulary else WHISPER_MULTILINGUAL_VOCAB
    if words < WHISPER_MULTILINGUAL_VOCAB:
        codes = None
    else:
        from faster_whisper.tokenizer import _LANGUAGE_CODES
        codes = set(_LANGUAGE_CODES)
    code = language_code(language, str(asr), codes, "an English-only Whisper")
    cuda = device is not None and getattr(device, "type", str(device)).startswith("cuda")
    return {"model": str(folder.resolve()), "config_sha256": digest, "language": code, "num_beams": num_beams,
            "backend": "faster-whisper", "compute_type": "float16" if cuda else "int8"}


def language_code(language, source: str, codes: set[str] | None, kind: str) -> str | None:
    """`language` ("en", "English", ...) as one of the model's language `codes` (a multilingual
    Whisper's); None, with a warning naming the model's `kind`, for models that take no language
    (codes None: CTC models, English-only Whisper `*.en`)."""
    if language is None:
        return None
    if codes is None:
        log.warning("--language %s ignored: %s (%s) takes no language", language, source, kind)
        return None
    code = TO_LANGUAGE_CODE.get(language.lower(), language.lower())
    if code not in codes:
        raise TranscribeError(f"--language {language}: not a language of {source}; it takes {sorted(codes)} "
                              "(codes, or names such as english)")
    return code


def whisper_languages(source: str, config) -> set[str] | None:
    """The language codes of a multilingual Whisper (its generation config's `<|xx|>` tokens), else None."""
    if config.model_type != "whisper":
        return None
    try:
        generation = GenerationConfig.from_pretrained(source)
    except OSError:
        return None
    if not getattr(generation, "is_multilingual", False):
        return None
    return {token.strip("<|>") for token in getattr(generation, "lang_to_id", {})}


class FasterWhisper:
    """A CTranslate2 Whisper run by faster-whisper (int8 on a CPU, float16 on a GPU), decoding
    each clip as transformers' pipeline does here: greedy or beam search, no voice-activity
    filter, no conditioning on earlier text."""
    type = "faster-whisper"

    def __init__(self, folder, device, compute_type: str):
        import torch
        from faster_whisper import WhisperModel
        cuda = device.type == "cuda"
        self.model = WhisperModel(str(folder), device="cuda" if cuda else "cpu", device_index=device.index or 0,
                                  compute_type=compute_type, cpu_threads=torch.get_num_threads())
        self.feature_extractor = self.model.feature_extractor   # its sampling_rate, as a pipeline's

    def __call__(self, waves, settings: dict) -> list[str]:
        return [" ".join(segment.text.strip() for segment in self.segments(wave, settings)).strip() for wave in waves]

    def segments(self, wave, settings: dict) -> list:
        """faster-whisper's segments of one clip (their text and the tokens decoded)."""
        segments, _ = self.model.transcribe(np.asarray(wave, dtype=np.float32), beam_size=settings.get("num_beams", 1),
                                            language=settings.get("language"), task="transcribe",
                                            condition_on_previous_text=False, vad_filter=False)
        return list(segments)


def load_recogniser(asr, device, stamp: dict | None = None):
    """transformers' speech-recognition pipeline over the model, its feature extractor and
    tokenizer; or faster-whisper where the stamp says so."""
    if stamp is not None and stamp.get("backend") == "faster-whisper":
        try:
            return FasterWhisper(asr, device, stamp["compute_type"])
        except (RuntimeError, ValueError, OSError) as err:
            raise TranscribeError(f"cannot load the CTranslate2 Whisper {str(asr)!r} ({err}); {LOAD_HINT}") from err
    try:
        return pipeline("automatic-speech-recognition", model=str(asr), device=device)
    except (OSError, ValueError, KeyError) as err:
        raise TranscribeError(f"cannot load speech recogniser {str(asr)!r} ({err}); {LOAD_HINT}") from err


def generate_kwargs(recogniser, stamp: dict) -> dict:
    """Decoding settings for the models that generate: beams, and Whisper's language and task."""
    if stamp["num_beams"] is None:
        return {}
    if stamp.get("backend") == "faster-whisper":
        return {"num_beams": stamp["num_beams"], "language": stamp["language"]}
    settings = {"num_beams": stamp["num_beams"]}
    if recogniser.type == "seq2seq_whisper" and recogniser.model.generation_config.is_multilingual:
        settings["task"] = "transcribe"  # not translate
        if stamp["language"]:
            settings["language"] = stamp["language"]
    return settings


def recognise(recogniser, waves, sampling_rate: int, settings: dict, batch_size: int) -> list[str]:
    """One transcript per wave. Whisper hears 30 s windows: a longer clip is decoded alone
    (batched pipelines pad features to one length), by Whisper's sequential long-form decoding,
    which needs the timestamp tokens."""
    if isinstance(recogniser, FasterWhisper):
        return recogniser(waves, settings)
    window = getattr(recogniser.feature_extractor, "n_samples", None) if recogniser.type == "seq2seq_whisper" else None
    if window and any(len(wave) > window for wave in waves):
        return [text for wave in waves
                for text in recognise_at_once(recogniser, [wave], sampling_rate, settings, 1, len(wave) > window)]
    return recognise_at_once(recogniser, waves, sampling_rate, settings, batch_size)


def recognise_at_once(recogniser, waves, sampling_rate, settings, batch_size, long_form=False) -> list[str]:
    inputs = [{"raw": wave, "sampling_rate": sampling_rate} for wave in waves]
    options = {"generate_kwargs": settings} if settings else {}
    if long_form:
        options["return_timestamps"] = True  # the text comes back without them
    return [output["text"].strip() for output in recogniser(inputs, batch_size=batch_size, **options)]


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
