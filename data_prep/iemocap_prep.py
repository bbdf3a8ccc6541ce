"""IEMOCAP release -> `iemocap.csv` + `audio/<FileName>.wav` for the 4-class task.
Pure parsers for the release's label and transcript files, then a thin layer that
validates the whole release, copies (or links) the audio and writes the csv last."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python data_prep/<script>.py`

import argparse  # noqa: E402
import logging  # noqa: E402

from dataio.iemocap import prepare  # noqa: E402
from models.errors import MMERError  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iemocap_root", required=True, type=Path,
                        help="the IEMOCAP_full_release folder (holds Session1..Session5)")
    parser.add_argument("--out_dir", required=True, type=Path, help="where iemocap.csv and audio/ are written")
    parser.add_argument("--link", action="store_true",
                        help="symlink the wavs instead of copying them (wavs needing conversion are still written)")
    parser.add_argument("--overwrite", action="store_true", help="replace a different iemocap.csv already in --out_dir")
    parser.add_argument("--augmented_text", type=Path,
                        help="upstream's 4-class csv: keep its AugmentedText column (the 2023 MMER's back-translated "
                             "transcripts; embed them with extract_roberta.py --text_column AugmentedText)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        prepare(args.iemocap_root, args.out_dir, link=args.link, overwrite=args.overwrite,
                augmented_text=args.augmented_text)
    except MMERError as err:
        print(err, file=sys.stderr)
        print(f"{len(err.problems)} problem(s); no csv written", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
