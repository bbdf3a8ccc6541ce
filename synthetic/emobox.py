"""Write a synthetic corpus in EmoBox's layout (github.com/emo-box/EmoBox) for the tests and the
offline demo: `data/<corpus>/` metadata as EmoBox publishes it and the audio under `downloads/<corpus>/`,
spoken by the letter vocoder of make_synthetic_iemocap.py with the class in the prosody only.

The layout copies what EmoBox's repository holds (read there: README.md, EmoBox/EmoDataset.py,
EmoBox/utils/preprocess_utils.py, data/cremad/, data/cafe/, data/meld/, data/msppodcast/):
- `data/<corpus>/fold_<k>/<corpus>_{train,test}_fold_<k>.jsonl`, k = 1..K; a corpus with an official
  dev set (MSP-Podcast, MELD) has one fold with `<corpus>_valid_fold_1.jsonl` too (`--layout split`).
- One JSON object a line, in EmoBox's key order: key (`<corpus>-<id>`), dataset, wav, type ("raw"),
  sample_rate, num_frame (a float), task ("category"), length (seconds), emo (the corpus's own code),
  channel (EmoBox writes 1 whatever the file holds; here too, some files are stereo).
- `wav` is relative to the EmoBox root and starts with `downloads/<corpus>/`: the user downloads the
  corpus into `<root>/downloads/<corpus>/` (EmoBox README, "Prepare datasets").
- `data/<corpus>/label_map.json`: emo code -> class name (CREMA-D's: ANG -> Angry, ...).
- `data/<corpus>/<corpus>.jsonl`: every utterance; `data/<corpus>/data.seg.wrd.stm`: one line per
  utterance, `<key> <channel> <speaker> <start> <end> <id=..,lang=..,spk=..,emotion=..> <emo>`,
  the only EmoBox file that names speakers.
- Folds are speaker-independent: with K folds, each fold tests on a group of speakers and trains on
  the rest (EmoBox's write_folds: one speaker per fold for 4-6 speakers, groups of about 4 above).

Differences from IEMOCAP on purpose: six classes spelt CREMA-D's way (upper-case codes, class names
not IEMOCAP's), speakers but no sessions, no transcripts, 22.05 kHz audio (synthesised at 16 kHz and
resampled, so nothing lies above 8 kHz), every STEREO_EVERY-th file in two channels."""
from pathlib import Path


import dataclasses
import json
import re
import shutil

import numpy as np
import soxr
from tqdm import tqdm

from synthetic.iemocap import (MIN_TRAIL_S, SR, CorpusError, Turn, describe, draw_prosody,
                                              draw_speaker, draw_words, punctuate, read_manifest, synthesize,
                                              target_durations)
from dataio.audio import write_wav
from utils.files import atomic_write_text

# Bump when the generator's output changes, so an older corpus counts as a different one.
GENERATOR_VERSION = 1
MANIFEST = "synthetic_corpus.json"  # in downloads/<corpus>/, beside the audio we wrote
LAYOUTS = ("folds", "split")

# emo code -> class name, as label_map.json; the vocoder's style for each (make_synthetic_iemocap.STYLES).
LABEL_MAP = {"ANG": "Anger", "DIS": "Disgust", "FEA": "Fear", "HAP": "Happiness", "NEU": "Neutral",
             "SAD": "Sadness"}
STYLE_OF = {"ANG": "ang", "DIS": "dis", "FEA": "fea", "HAP": "hap", "NEU": "neu", "SAD": "sad"}
STEREO_EVERY = 4  # every 4th utterance of a speaker is written in two channels
FIRST_SPEAKER = 1001  # speaker ids as CREMA-D's actors: 1001, 1002, ...


@dataclasses.dataclass(frozen=True)
class Utterance:
    key: str
    wav: str       # relative to the EmoBox root: downloads/<corpus>/<speaker>/<file>.wav
    speaker: str
    emo: str
    stereo: bool
    turn: Turn     # what the vocoder says and how


# ---------------------------------------------------------------- planning (pure, driven by one rng)


def plan_utterances(corpus: str, per_class: int, speakers: int, rng) -> list[Utterance]:
    """per_class utterances of every class from every speaker. The words are neutral filler
    (draw_words without a label adds none of the emotional ones): the class is in the prosody only."""
    voices = [dataclasses.replace(draw_speaker(1, "FM"[i % 2], rng), name=str(FIRST_SPEAKER + i))
              for i in range(speakers)]
    targets = iter(target_durations(speakers * len(LABEL_MAP) * per_class, "short", rng))
    plan = []
    for voice in voices:
        for n, (emo, index) in enumerate((emo, i) for emo in LABEL_MAP for i in range(per_class)):
            style = STYLE_OF[emo]
            prosody = draw_prosody(style, voice, rng)
            lead, target = rng.uniform(0.12, 0.4), float(next(targets))
            words = draw_words(None, target - lead - MIN_TRAIL_S, prosody.tempo, rng)
            name = f"{voice.name}_{emo}_{index:02d}"
            turn = Turn(id=name, speaker=voice, label=style, tokens=punctuate(words, style, rng), prosody=prosody,
                        lead_s=lead, target_s=target, gap_s=0.0, seed=int(rng.integers(2 ** 63)))
            plan.append(Utterance(key=f"{corpus}-{name.replace('_', '-')}",
                                  wav=f"downloads/{corpus}/{voice.name}/{name}.wav", speaker=voice.name,
                                  emo=emo, stereo=n % STEREO_EVERY == STEREO_EVERY - 1, turn=turn))
    return plan


def speaker_folds(speakers: list[str], folds: int, rng) -> list[list[str]]:
    """Shuffled speakers dealt round-robin into `folds` test groups."""
    order = [speakers[i] for i in rng.permutation(len(speakers))]
    return [order[k::folds] for k in range(folds)]


def fold_splits(speakers: list[str], layout: str, folds: int, rng) -> dict[int, dict[str, set]]:
    """fold -> EmoBox split word (train / valid / test) -> its speakers."""
    if layout == "folds":
        groups = speaker_folds(speakers, folds, rng)
        return {k + 1: {"train": set(speakers) - set(group), "test": set(group)} for k, group in enumerate(groups)}
    order = [speakers[i] for i in rng.permutation(len(speakers))]
    n_held = max(1, round(len(order) / 4))
    return {1: {"train": set(order[2 * n_held:]), "valid": set(order[n_held:2 * n_held]),
                "test": set(order[:n_held])}}


# ---------------------------------------------------------------- EmoBox's text files (pure)


def jsonl_line(utt: Utterance, corpus: str, sample_rate: int, frames: int) -> str:
    entry = {"key": utt.key, "dataset": corpus, "wav": utt.wav, "type": "raw", "sample_rate": sample_rate,
             "num_frame": float(frames), "task": "category", "length": frames / sample_rate, "emo": utt.emo,
             "channel": 1}
    return json.dumps(entry) + "\n"


def stm_line(utt: Utterance, seconds: float) -> str:
    meta = f"<id={utt.key},lang=en,spk={utt.speaker},emotion={utt.emo}>"
    return f"{utt.key} 1 {utt.speaker} 0 {seconds} {meta} {utt.emo}\n"


# ---------------------------------------------------------------- writing


def render(utt: Utterance, sample_rate: int) -> np.ndarray:
    """The utterance's samples at sample_rate, [n] or [n, 2] for a stereo file."""
    samples = synthesize(utt.turn)
    if sample_rate != SR:
        samples = soxr.resample(samples, SR, sample_rate)
    if utt.stereo:
        # The second microphone hears the voice a little softer; the mean of both is what a downmix gets.
        samples = np.stack([samples, 0.7 * samples], axis=1)
    return np.clip(samples, -1.0, 1.0).astype(np.float32)


def prepare_out_dirs(data_dir: Path, audio_dir: Path, settings: dict, overwrite: bool) -> None:
    """Accept new folders or ones holding this same corpus; replace another synthetic corpus of this
    name only with overwrite; never touch folders we did not write (a real EmoBox checkout)."""
    present = [d for d in (data_dir, audio_dir) if d.is_dir() and any(d.iterdir())]
    if present:
        found = read_manifest(audio_dir / MANIFEST)
        if found is None:
            raise CorpusError(f"{present[0]} is not empty and holds no synthetic corpus (no {audio_dir / MANIFEST}); "
                              "pass another --out or --corpus")
        if found != settings and not overwrite:
            raise CorpusError(f"{audio_dir.parent.parent} already holds a different synthetic {audio_dir.name} "
                              f"({describe(found)}); pass another --out or --overwrite to replace it")
        if found != settings:
            shutil.rmtree(data_dir, ignore_errors=True)
            shutil.rmtree(audio_dir, ignore_errors=True)
    # Written first: a run that stops half-way is completed by the same command.
    atomic_write_text(audio_dir / MANIFEST, json.dumps(settings, indent=1) + "\n")


def check_settings(corpus: str, per_class: int, speakers: int, folds: int, sample_rate: int, layout: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9]+", corpus):
        raise ValueError(f"corpus must be letters and digits (it names files and keys), got {corpus!r}")
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    if speakers < 2:
        raise ValueError(f"speakers must be at least 2, got {speakers}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if layout == "folds" and not 2 <= folds <= speakers:
        raise ValueError(f"folds must be between 2 and the number of speakers ({speakers}), got {folds}")
    if layout == "split" and speakers < 3:
        raise ValueError(f"the split layout needs at least 3 speakers (train, valid, test), got {speakers}")
    if sample_rate < 8000:
        raise ValueError(f"sample_rate must be at least 8000 Hz, got {sample_rate}")


def make_emobox_corpus(out_dir, corpus: str = "synth6", per_class: int = 10, speakers: int = 4, folds: int = 4,
                       sample_rate: int = 22050, seed: int = 0, layout: str = "folds",
                       overwrite: bool = False) -> dict:
    """Write the corpus under out_dir (which plays the EmoBox root) and return its paths: root and
    wav_root (out_dir), emobox_dir (data/<corpus>), label_map, stm, audio_dir (downloads/<corpus>) and
    fold_files ({k: {"train"|"valid"|"test": path}}). layout "folds": `folds` speaker-independent
    folds; "split": fold_1 only, with train, valid and test speakers (MSP-Podcast style)."""
    check_settings(corpus, per_class, speakers, folds, sample_rate, layout)
    root = Path(out_dir)
    data_dir, audio_dir = root / "data" / corpus, root / "downloads" / corpus
    settings = {"generator_version": GENERATOR_VERSION, "corpus": corpus, "per_class": per_class,
                "speakers": speakers, "folds": folds if layout == "folds" else 1, "sample_rate": sample_rate,
                "seed": seed, "layout": layout}
    prepare_out_dirs(data_dir, audio_dir, settings, overwrite)
    rng = np.random.default_rng(seed)
    plan = plan_utterances(corpus, per_class, speakers, rng)
    splits = fold_splits(sorted({u.speaker for u in plan}), layout, folds, rng)
    lines, stm = {}, []
    for utt in tqdm(plan, desc="synthesising", unit="utt"):
        samples = render(utt, sample_rate)
        write_wav(root / utt.wav, samples, sr=sample_rate)
        lines[utt.key] = jsonl_line(utt, corpus, sample_rate, len(samples))
        stm.append(stm_line(utt, len(samples) / sample_rate))
    paths = {"root": root, "wav_root": root, "emobox_dir": data_dir, "label_map": data_dir / "label_map.json",
             "stm": data_dir / "data.seg.wrd.stm", "audio_dir": audio_dir, "fold_files": {}}
    atomic_write_text(paths["label_map"], json.dumps(LABEL_MAP, indent=4))
    atomic_write_text(paths["stm"], "".join(stm))
    atomic_write_text(data_dir / f"{corpus}.jsonl", "".join(lines.values()))
    for k, by_split in splits.items():
        paths["fold_files"][k] = {}
        for split, members in by_split.items():
            path = data_dir / f"fold_{k}" / f"{corpus}_{split}_fold_{k}.jsonl"
            atomic_write_text(path, "".join(lines[u.key] for u in plan if u.speaker in members))
            paths["fold_files"][k][split] = path
    return paths
