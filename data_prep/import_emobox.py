"""EmoBox corpus -> `corpus.csv` + `audio/<FileName>.wav` + `label_map.json` (the corpus table of
docs/CORPUS.md). Pure parsers and checks of EmoBox's metadata, then a thin layer that checks every
wav, converts (or links) the audio and writes the csv last.

What this relies on, read in EmoBox's repository (github.com/emo-box/EmoBox: README.md,
EmoBox/EmoDataset.py, EmoBox/utils/preprocess_utils.py, data/{cremad,cafe,iemocap,meld,msppodcast,
pavoque}/):
- `--emobox_dir` is one corpus folder, `data/<corpus>/`, holding `fold_<k>/<corpus>_train_fold_<k>.jsonl`
  and `<corpus>_test_fold_<k>.jsonl` for k = 1..K, optionally `<corpus>_valid_fold_<k>.jsonl` (the
  official dev set of MSP-Podcast and MELD, which have one fold), and `label_map.json`.
- Each jsonl line is one JSON object: key (`<corpus>-<id>`, unique), dataset, wav, type, sample_rate,
  num_frame, task, length (seconds), emo (the corpus's own code), channel; PAVOQUE's also carry
  start_time/end_time (seconds): the utterance is that stretch of a long recording, cut as EmoDataset
  does (frames int(start * sr) to int(end * sr)). Required here: key, wav, emo.
- `wav` is relative to the EmoBox root and starts with `downloads/<corpus>/`, so `--wav_root` is the
  folder that holds `downloads/` (EmoBox README, "Prepare datasets"). Not all are wavs: PAVOQUE's
  are flac (read by libsndfile); MELD's mp4, MER2023's and eNTERFACE's avi, EMNS's webm and MEAD's m4a
  are read by FFmpeg (PyAV; dataio.audio): the first audio stream, converted to 16 kHz mono wav.
- `channel` is not a channel count (CREMA-D writes 1 for every file, MELD 1 or 3): channels are read
  from the files and averaged; sample_rate and num_frame are likewise taken from the file itself.
- `label_map.json` maps emo code -> class name, and may map two codes to one name (IEMOCAP's
  exc and hap -> Happy): it is copied as it is, merging is the reader's business.
- No jsonl names the speaker. `data/<corpus>/data.seg.wrd.stm` does (`<key> <channel> <spk> ...`,
  written for every corpus by preprocess_utils.write_mini_format); when it is there and names every
  key, its spk becomes the `speaker` column, otherwise there is none. It is EmoBox's grouping, not
  always the talker: IEMOCAP's spk is the dialog's lead actor (`Ses01F` for an M utterance too).

The csv: FileName (the key, characters other than letters, digits, `.`, `_`, `-` replaced by `_`),
key (as EmoBox spells it), path (`<FileName>.wav`), Label (the emo code), speaker (see above),
dataset, duration (seconds of the source), and `split_<k>` per fold: train, dev (EmoBox's valid),
test, or empty when the utterance is not in fold k."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python data_prep/<script>.py`

import argparse  # noqa: E402
import logging  # noqa: E402

from dataio.emobox import import_emobox  # noqa: E402
from models.errors import MMERError  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emobox_dir", required=True, type=Path,
                        help="one corpus folder of EmoBox's metadata, data/<corpus> (fold_<k>/, label_map.json)")
    parser.add_argument("--wav_root", required=True, type=Path,
                        help="the folder the jsonl's wav paths are relative to: the one holding downloads/<corpus>/")
    parser.add_argument("--out_dir", required=True, type=Path, help="where corpus.csv, label_map.json and audio/ go")
    parser.add_argument("--link", action="store_true",
                        help="symlink files that are already 16 kHz mono PCM16 wavs instead of copying them")
    parser.add_argument("--overwrite", action="store_true", help="replace a different corpus.csv already in --out_dir")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        import_emobox(args.emobox_dir, args.wav_root, args.out_dir, link=args.link, overwrite=args.overwrite)
    except MMERError as err:
        print(err, file=sys.stderr)
        print(f"{len(err.problems)} problem(s); no csv written", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
