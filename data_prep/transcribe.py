"""Transcripts from a speech recogniser: fills the column `transcript` of a corpus table
(docs/CORPUS.md) with any transformers speech-recognition model (Whisper, wav2vec2-CTC, ...) or a
CTranslate2 Whisper through faster-whisper (int8 on a CPU), batched by length on CPU or GPU, and records the model, its cost and its WER in `<stem>.asr.json`.

Resumable: each finished batch is appended to `<stem>.transcribe.jsonl` beside the table (a
first line naming model, language and decoding, then one {"FileName", "transcript"} line per
utterance), so a killed run goes on where it stopped. The file is kept as the record of what was
transcribed: a rerun with the same settings only transcribes rows it lacks (new ones), one with
another model or language is refused unless --overwrite, which redoes everything.

Sharded: `torchrun --nproc_per_node N data_prep/transcribe.py ...` deals the one-process batches out
whole (batch k to process k mod N), each process appending to `<stem>.transcribe.rank<r>.jsonl`;
when all have finished, rank 0 merges them into the one sidecar and writes the table: the same
files as one process. A killed launch resumes from its shards with any number of processes."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python data_prep/<script>.py`

import argparse  # noqa: E402
import logging  # noqa: E402

from transformers.utils import logging as hf_logging  # noqa: E402
from utils import distributed  # noqa: E402
from utils.cli import number  # noqa: E402
from dataio.asr import ASR_BACKENDS, DEFAULT_ASR  # noqa: E402
from models.errors import MMERError  # noqa: E402
from dataio.transcripts import summary_line, transcribe_table  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", required=True, type=Path, help="the corpus table (docs/CORPUS.md)")
    parser.add_argument("--asr", default=DEFAULT_ASR, help="hub name or save_pretrained folder of the recogniser, "
                        "or a CTranslate2 Whisper folder (faster-whisper)")
    parser.add_argument("--asr_backend", choices=ASR_BACKENDS, default="auto",
                        help="auto: faster-whisper for a folder with model.bin (CTranslate2), else transformers")
    parser.add_argument("--language", default=None,
                        help="Whisper's language (en, french, ...); default: detected per utterance")
    parser.add_argument("--audio_dir", type=Path, default=None,
                        help="folder the audio paths are relative to (default: audio/ beside the table, "
                             "else the table's folder)")
    parser.add_argument("--batch_size", type=number(int, 1), default=8, help="utterances per forward pass")
    parser.add_argument("--num_beams", type=number(int, 1), default=1,
                        help="beam search width of generating models (1: greedy, the cheapest)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    parser.add_argument("--overwrite", action="store_true", help="redo every transcript, discarding earlier ones")
    args = parser.parse_args(argv)
    hf_logging.disable_progress_bar()  # per-shard save/load bars say nothing here
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = transcribe_table(args.csv, args.asr, args.language, args.audio_dir, args.batch_size,
                                   args.device, args.overwrite, args.num_beams, args.asr_backend)
    except MMERError as err:
        parser.exit(2, f"error: {err}\n")
    finally:
        distributed.shutdown()
    if summary:  # rank 0 of a torchrun launch, or the one process
        print(summary_line(summary))


if __name__ == "__main__":
    main()
