"""Text features: RoBERTa's last hidden state over each csv row's `Sentences` (or another
transcript column: --text_column transcript for a speech recogniser's), written as
`<out_dir>/<FileName>.npy` (float32, [1, T, H], T counting `<s>` and `</s>`). Batched on
CPU or GPU, resumable (files already written are skipped), each file written atomically."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python data_prep/<script>.py`

import argparse  # noqa: E402
import logging  # noqa: E402

from transformers.utils import logging as hf_logging  # noqa: E402
from utils import distributed  # noqa: E402
from utils.cli import number  # noqa: E402
from dataio.text_features import DEFAULT_TEXT_COLUMN, extract  # noqa: E402
from models.errors import MMERError  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--csv", required=True, type=Path, help="corpus table with FileName and a transcript column")
    parser.add_argument("--text_column", default=DEFAULT_TEXT_COLUMN,
                        help="the transcripts to embed: Sentences (reference, default) or transcript (a speech "
                             "recogniser's, from data_prep/transcribe.py)")
    parser.add_argument("--out_dir", required=True, type=Path, help="folder for the <FileName>.npy files")
    parser.add_argument("--roberta", default="roberta-base",
                        help="hub name or save_pretrained folder of the text encoder")
    parser.add_argument("--batch_size", type=number(int, 1), default=32, help="transcripts per forward pass")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    parser.add_argument("--overwrite", action="store_true", help="recompute files that already exist")
    args = parser.parse_args(argv)
    hf_logging.disable_progress_bar()  # per-shard save/load bars say nothing here
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        extract(args.csv, args.out_dir, args.roberta, args.batch_size, args.device, args.overwrite, args.text_column)
    except MMERError as err:
        raise SystemExit(f"error: {err}") from err
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    main()
