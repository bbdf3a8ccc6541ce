"""EmoBox corpus -> `corpus.csv` + `audio/<FileName>.wav` + `label_map.json` (the corpus table of
docs/CORPUS.md), for any of EmoBox's corpus folders (wav, flac, and MELD's mp4, MER2023's and
eNTERFACE's avi, EMNS's webm, MEAD's m4a through FFmpeg):

    python data_prep/import_emobox.py --emobox_dir EmoBox/data/cremad --wav_root EmoBox --out_dir data/cremad

The command line of dataio/emobox.py, whose docstring says what it reads in EmoBox's layout and
what the csv holds. Every problem is named, with the fix, before anything is written."""
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
        print(f"{len(getattr(err, 'problems', [err]))} problem(s); no csv written", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
