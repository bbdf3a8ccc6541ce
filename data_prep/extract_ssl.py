"""Speech-encoder features for the frozen-encoder protocol (SUPERB, EmoBox): every hidden state
of a speech encoder (wav2vec2, HuBERT, WavLM, data2vec-audio or Whisper's encoder), or those
--layers names, written per utterance as `<out_dir>/<FileName>.npy` [hidden states, frames,
width] with `<out_dir>/encoder.json`. Resumable; under torchrun each process takes a share.
The disk it takes is printed before it starts, and it refuses when the disk is short: IEMOCAP's
four-class utterances with wav2vec2-base, 13 states in float16, take about 25 GB."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python data_prep/<script>.py`

import argparse  # noqa: E402
import logging  # noqa: E402

from transformers.utils import logging as hf_logging  # noqa: E402
from utils import distributed  # noqa: E402
from utils.cli import number  # noqa: E402
from dataio.ssl_features import DTYPES, extract  # noqa: E402
from models.errors import MMERError  # noqa: E402


def layer_choice(values: list[str]):
    """["all"] -> None (every hidden state); else the indices (ValueError for a non-integer)."""
    if values == ["all"]:
        return None
    try:
        return [int(value) for value in values]
    except ValueError:
        raise SystemExit(f"error: --layers {' '.join(values)}: give `all` or hidden-state indices "
                         "(0 = the embedding output, -1 = the last layer)") from None


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--csv", required=True, type=Path, help="corpus table with a FileName column (and `path`)")
    parser.add_argument("--data_path_audio", required=True, type=Path,
                        help="folder of the audio: <FileName>.wav, or the table's `path` under it")
    parser.add_argument("--encoder", required=True,
                        help="hub name or save_pretrained folder of the speech encoder (e.g. facebook/wav2vec2-base, "
                             "microsoft/wavlm-large, openai/whisper-large-v3)")
    parser.add_argument("--out_dir", required=True, type=Path, help="folder for the <FileName>.npy files")
    parser.add_argument("--layers", nargs="+", default=["all"],
                        help="hidden states to keep: all (the embedding output and every layer, default) or "
                             "indices, 0 = the embedding output, negative from the end (--layers 0 -1)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float16", help="how the states are stored")
    parser.add_argument("--batch_size", type=number(int, 1), default=8,
                        help="utterances per forward pass (where padding cannot change the states; else "
                             "utterances of one length)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    parser.add_argument("--overwrite", action="store_true", help="recompute files that already exist")
    args = parser.parse_args(argv)
    layers = layer_choice(args.layers)
    hf_logging.disable_progress_bar()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        extract(args.csv, args.data_path_audio, args.out_dir, args.encoder, layers, args.dtype, args.batch_size,
                args.device, args.overwrite)
    except MMERError as err:
        raise SystemExit(f"error: {err}") from err
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    main()
