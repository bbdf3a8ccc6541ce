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
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python data_prep/<script>.py`

import argparse  # noqa: E402
import time  # noqa: E402

from synthetic.emobox import LABEL_MAP, LAYOUTS, make_emobox_corpus  # noqa: E402
from models.errors import MMERError  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path,
                        help="folder that plays the EmoBox root: data/<corpus>/ and downloads/<corpus>/ go there")
    parser.add_argument("--corpus", default="synth6", help="corpus name (folder, file prefix, key prefix)")
    parser.add_argument("--per_class", type=int, default=10, help="utterances of each class from each speaker")
    parser.add_argument("--speakers", type=int, default=4, help="number of speakers")
    parser.add_argument("--folds", type=int, default=4, help="speaker-independent folds (layout folds)")
    parser.add_argument("--sample_rate", type=int, default=22050, help="sample rate of the wavs, Hz")
    parser.add_argument("--seed", type=int, default=0, help="same seed, byte-identical corpus")
    parser.add_argument("--layout", choices=LAYOUTS, default="folds",
                        help="folds: K speaker-independent folds; split: fold_1 only, with train/valid/test "
                             "(MSP-Podcast style)")
    parser.add_argument("--overwrite", action="store_true", help="replace a different synthetic corpus of this name")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    try:
        paths = make_emobox_corpus(args.out, args.corpus, args.per_class, args.speakers, args.folds,
                                   args.sample_rate, args.seed, args.layout, args.overwrite)
    except ValueError as err:
        parser.error(str(err))
    except MMERError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    n = sum(1 for _ in paths["stm"].open())
    print(f"wrote {n} utterances ({len(LABEL_MAP)} classes, {args.speakers} speakers, "
          f"{len(paths['fold_files'])} fold(s)) to {paths['emobox_dir']} and {paths['audio_dir']} "
          f"in {time.perf_counter() - began:.1f} s\nimport it with: python data_prep/import_emobox.py "
          f"--emobox_dir {paths['emobox_dir']} --wav_root {paths['wav_root']} --out_dir OUT")
    return 0


if __name__ == "__main__":
    sys.exit(main())
