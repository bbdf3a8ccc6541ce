"""MSP-Podcast release -> `corpus.csv` (Train, Development, Test1), `test2.csv`, `test3.csv`,
`label_map.json` and `audio/<FileName>.wav` (corpus tables of docs/CORPUS.md):

    python data_prep/import_msppodcast.py --msp_dir MSP-PODCAST-Publish-1.12 --out_dir data/msppodcast --link

The command line of dataio/msppodcast.py, whose docstring says what it reads in the release and what
the tables hold (docs/MSPPODCAST.md: the whole chain). Every problem is named, with the fix, before
anything is written."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python data_prep/<script>.py`

import argparse  # noqa: E402
import logging  # noqa: E402

from dataio.msppodcast import import_msppodcast  # noqa: E402
from models.errors import MMERError  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--msp_dir", required=True, type=Path,
                        help="the release folder: Labels/labels_consensus.csv (or .json), Audios/")
    parser.add_argument("--out_dir", required=True, type=Path,
                        help="where corpus.csv, test2.csv, test3.csv, label_map.json and audio/ go")
    parser.add_argument("--link", action="store_true",
                        help="symlink files that are already 16 kHz mono PCM16 wavs instead of copying them")
    parser.add_argument("--overwrite", action="store_true", help="replace different tables already in --out_dir")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        import_msppodcast(args.msp_dir, args.out_dir, link=args.link, overwrite=args.overwrite)
    except MMERError as err:
        print(err, file=sys.stderr)
        print(f"{len(getattr(err, 'problems', [err]))} problem(s); no table written", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
