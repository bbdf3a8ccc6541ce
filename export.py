r"""Export a trained run to ONNX, for onnxruntime (predict.py --backend onnxruntime,
inference.EmotionRecognizer.from_onnx) or any other ONNX runtime:

    python export.py runs/mmer --format onnx --out exported/mmer [--session 1] [--opset 20]

For each fold's checkpoint `<fold>_model.pt` (all by default) it writes `<fold>_model.onnx`:
normalised 16 kHz audio (and an attention mask, for encoders whose feature extractor asks for
one; and for mmer the transcript's text features and their lengths) -> class probabilities,
logits, frame lengths, the CTC logits (cai_sota, mmer) and, for mmer, the audio frames that
`<fold>_fusion.onnx` (audio frames + text features -> probabilities) classifies once the CTC
transcript is known. For mmer also the text encoder, `text_encoder.onnx` (input_ids,
attention_mask -> last_hidden_state), with its tokenizer in `text_encoder_tokenizer/`. Last,
`manifest.json`: classes, audio preparation (the per-recording normalisation happens before the
graph), inputs and outputs of every graph, CTC vocabulary, versions, and how to run it.

Batch and lengths are dynamic. Every graph is checked against PyTorch with onnxruntime on
inputs of other lengths than the traced ones before the manifest is written; the differences
are recorded in it. Exported with torch.onnx.export's dynamo exporter (torch.export), torch's
default; the deprecated TorchScript exporter is not used.
"""
import argparse
import logging
import sys
from pathlib import Path

from inference.onnx_export import MIN_OPSET, export_run
from models.errors import MMERError
from models import MODELS
from utils.cli import HelpFormatter, Parser, add_number

FORMATS = ("onnx",)


# ---------------------------------------------------------------- command line
def parse_args(argv=None) -> argparse.Namespace:
    p = Parser(prog="export.py", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("run_dir", type=Path, help="the run folder (<save_path>/<run>) holding <fold>_model.pt")
    p.add_argument("--format", choices=FORMATS, default="onnx", help="what to export to")
    p.add_argument("--out", type=Path, required=True, help="folder to write the graphs and manifest.json into")
    p.add_argument("--session", help="export only <session>_model.pt (default: every fold)")
    add_number(p, "--opset", int, MIN_OPSET, default=None, help="ONNX opset (default: the exporter's)")
    p.add_argument("--run", choices=list(MODELS),
                   help="the variant; read from our checkpoints, needed for published ones")
    p.add_argument("--wav2vec2", help="speech encoder architecture (default: the checkpoint's)")
    p.add_argument("--roberta", help="mmer's text encoder (default: the one recorded in <run_dir>/config.json)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        manifest = export_run(args.run_dir, args.out, args.session, args.opset, args.run, args.wav2vec2, args.roberta,
                              args.overwrite)
    except (MMERError, OSError) as err:
        print(f"export.py: error: {err}", file=sys.stderr)
        raise SystemExit(2) from err
    worst = max(fold["max_abs_diff_vs_torch"]["model"]["probabilities"] for fold in manifest["folds"].values())
    print(f"exported {manifest['run']} ({', '.join(manifest['folds'])}) to {args.out}; largest difference from "
          f"PyTorch on probabilities: {worst:.2e}")
    return manifest


if __name__ == "__main__":
    main()
