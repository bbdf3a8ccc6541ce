"""Write a synthetic IEMOCAP release (the folders and file formats of IEMOCAP_full_release)
for the offline demo and the tests. A small letter-by-letter vocoder speaks each transcript;
the emotion is audible in the prosody and, for about half of the utterances, visible in the words."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python data_prep/<script>.py`

import argparse  # noqa: E402
import time  # noqa: E402

from synthetic.iemocap import DISTRACTOR_FRACTION, make_corpus, summary  # noqa: E402
from models.errors import MMERError  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, type=Path,
                        help="folder that plays the role of IEMOCAP_full_release/ (created if missing)")
    parser.add_argument("--per_session", type=int, default=100,
                        help="4-class utterances per session; %d%%%% more with filtered labels are added"
                        % round(100 * DISTRACTOR_FRACTION))
    parser.add_argument("--seed", type=int, default=0, help="same seed, byte-identical corpus")
    parser.add_argument("--durations", choices=("short", "iemocap"), default="short",
                        help="short: 1-3.5 s per utterance (demo, tests); iemocap: IEMOCAP-like, "
                             "mean 4.5 s, up to about 30 s (benchmarks)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a different synthetic corpus already in --out")
    args = parser.parse_args(argv)
    if args.per_session < 1:
        parser.error(f"--per_session must be at least 1, got {args.per_session}")
    began = time.perf_counter()
    try:
        table = make_corpus(args.out, args.per_session, args.seed, args.durations, args.overwrite)
    except MMERError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(summary(table, args.out, time.perf_counter() - began))
    return 0


if __name__ == "__main__":
    sys.exit(main())
