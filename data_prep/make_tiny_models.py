"""Tiny randomly initialised models for the tests and the offline demo: a wav2vec2 with
the 32-symbol CTC vocabulary, a RoBERTa with a locally trained byte-level BPE tokenizer and a
Whisper speech recogniser with Whisper's special tokens, saved with save_pretrained so they
load exactly like facebook/wav2vec2-base, roberta-base and openai/whisper-small."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python data_prep/<script>.py`

import argparse  # noqa: E402

from transformers.utils import logging as hf_logging  # noqa: E402
from synthetic.tiny_models import make_tiny_models  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, type=Path, help="folder to write wav2vec2/, roberta/ and whisper/ into")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args(argv)
    hf_logging.disable_progress_bar()  # per-shard save/load bars say nothing here
    for name, path in make_tiny_models(args.out, args.seed).items():
        print(f"tiny {name}: {path}")


if __name__ == "__main__":
    main()
