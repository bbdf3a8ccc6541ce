"""Write a synthetic corpus in EmoBox's layout (github.com/emo-box/EmoBox) for the tests and the
offline demo: `data/<corpus>/` metadata as EmoBox publishes it and the audio under `downloads/<corpus>/`.

    python data_prep/make_synthetic_emobox.py --out data/emobox_demo [--layout split]

The command line of synthetic/emobox.py, whose docstring says which of EmoBox's files it copies and
where it differs from IEMOCAP on purpose."""
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
