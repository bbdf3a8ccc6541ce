"""Compare runs side by side: one table (comparison.csv/.md) and one bar chart (comparison.png).

    python compare.py runs/unimodal_baseline runs/cai_sota runs/mmer --out runs/compare
"""
import argparse
import logging
import sys
from pathlib import Path

from training.comparison import compare, default_out, markdown_table
from models.errors import MMERError

log = logging.getLogger("mmer.compare")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Compare runs side by side: one table and one bar chart.")
    parser.add_argument("paths", nargs="+", help="run folders (<save_path>/<run>), save folders, or results.json files")
    parser.add_argument("--over_seeds", action="store_true",
                        help="also seeds.md/.csv: runs of one configuration with different seeds as one row")
    parser.add_argument("--out", help="folder for comparison.{csv,md,png} (default: <save folder of the first "
                                      "run>/comparison)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args.out = args.out or default_out(args.paths[0])
    try:
        frame = compare(args.paths, args.out, seeds=args.over_seeds)
    except (MMERError, OSError) as err:
        log.error("%s", err)
        sys.exit(2)
    print(markdown_table(frame))
    if args.over_seeds:
        print((Path(args.out) / "seeds.md").read_text())
    print(f"wrote comparison.csv, comparison.md and comparison.png to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
