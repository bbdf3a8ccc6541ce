"""Compare runs side by side: one table (comparison.csv/.md, with 95 % intervals) and one bar
chart (comparison.png); with --paired, whether their differences are real (significance.csv/.md,
docs/SIGNIFICANCE.md).

    python compare.py runs/unimodal_baseline runs/cai_sota runs/mmer --out runs/compare
    python compare.py runs/unimodal_baseline runs/mmer --paired --resamples 1000 --seed 0
"""
import argparse
import logging
import sys
from pathlib import Path

from training.comparison import RESAMPLES, SEED, compare, default_out, markdown_table
from models.errors import MMERError

log = logging.getLogger("mmer.compare")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Compare runs side by side: one table and one bar chart.")
    parser.add_argument("paths", nargs="+", help="run folders (<save_path>/<run>), save folders, or results.json files")
    parser.add_argument("--over_seeds", action="store_true",
                        help="also seeds.md/.csv: runs of one configuration with different seeds as one row")
    parser.add_argument("--paired", action="store_true",
                        help="also significance.csv/.md: every pair of runs compared utterance by utterance (paired "
                             "bootstrap interval and permutation test over the test utterances both predicted)")
    parser.add_argument("--resamples", type=int, default=RESAMPLES,
                        help="bootstrap resamples and permutations, for the intervals and --paired's tests")
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the resampling (not of any training)")
    parser.add_argument("--out", help="folder for comparison.{csv,md,png} (default: <save folder of the first "
                                      "run>/comparison)")
    args = parser.parse_args(argv)
    if args.resamples < 1:
        parser.error(f"--resamples {args.resamples}: give 1 or more (1000 is the default)")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args.out = args.out or default_out(args.paths[0])
    try:
        frame = compare(args.paths, args.out, seeds=args.over_seeds, paired=args.paired,
                        resamples=args.resamples, seed=args.seed)
    except (MMERError, OSError) as err:
        log.error("%s", err)
        sys.exit(2)
    print(markdown_table(frame))
    written = ["comparison.csv", "comparison.md", "comparison.png"]
    if args.over_seeds:
        print((Path(args.out) / "seeds.md").read_text())
        written += ["seeds.csv", "seeds.md", "seeds_significance.csv"]
    if args.paired:
        print((Path(args.out) / "significance.md").read_text())
        written += ["significance.csv", "significance.md"]
    print(f"wrote {', '.join(written)} to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
