r"""Export a trained run, for use without training code:

    python export.py runs/mmer --format onnx --out exported/mmer [--session 1] [--opset 20]
    python export.py runs/mmer --format hf --out shared/mmer [--session 1 | --ensemble] [--include_text_encoder]
        [--asr openai/whisper-small] [--push USER/REPO]

--format onnx: for each fold's checkpoint `<fold>_model.pt` (all by default) `<fold>_model.onnx`
(normalised 16 kHz audio, and for mmer the transcript's text features -> class probabilities,
logits, frame lengths, CTC logits, and for mmer the audio frames `<fold>_fusion.onnx` classifies
once the CTC transcript is known), mmer's `text_encoder.onnx` with its tokenizer, and
`manifest.json`; for onnxruntime (predict.py --backend onnxruntime,
inference.EmotionRecognizer.from_onnx) or any ONNX runtime. Every graph is checked against
PyTorch with onnxruntime on other lengths than the traced ones; the differences are recorded.

--format hf: a Hugging Face model folder that loads without this repository, on a machine with
torch, transformers, safetensors and soundfile: transformers.AutoModel.from_pretrained(DIR,
trust_remote_code=True), or pipeline("audio-classification", model=DIR, trust_remote_code=True)
-> [{"label", "score"}, ...]. It holds config.json, model.safetensors, the models/ package, the
speech encoder's feature extractor, the CTC vocabulary, the text encoder's Hub name (its weights
and tokenizer with --include_text_encoder, which a local text encoder needs), a model card from
the run's results and mmer_export.json. The run must have finished (results.json); one fold
(--session, default the first) or all (--ensemble, probabilities averaged). --push uploads it to
the Hub.

Both formats name models as another machine would: a Hub id as it is, a local folder as
`local:<folder name>`; no path of the exporting machine is written into the export. A local
--asr recogniser (a transformers folder) is copied into the folder's asr/ and loaded from there.
"""
import argparse
import logging
import sys
from pathlib import Path

from inference.hf_export import export_hf, push
from inference.onnx_export import MIN_OPSET, export_run
from models import MODELS
from models.errors import MMERError
from utils.cli import HelpFormatter, Parser, add_number

FORMATS = ("onnx", "hf")
ONNX_ONLY = ("opset", "run", "wav2vec2", "roberta")
HF_ONLY = ("ensemble", "include_text_encoder", "asr", "language", "push", "private")


# ---------------------------------------------------------------- command line
def parse_args(argv=None) -> argparse.Namespace:
    p = Parser(prog="export.py", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("run_dir", type=Path, help="the run folder (<save_path>/<run>) holding <fold>_model.pt")
    p.add_argument("--format", choices=FORMATS, default="onnx", help="onnx: graphs for onnxruntime; hf: a Hugging "
                                                                     "Face model folder")
    p.add_argument("--out", type=Path, required=True, help="folder to write the export into")
    p.add_argument("--session", help="export only <session>_model.pt (onnx default: every fold; hf: the first)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")
    onnx = p.add_argument_group("onnx")
    add_number(onnx, "--opset", int, MIN_OPSET, default=None, help="ONNX opset (default: the exporter's)")
    onnx.add_argument("--run", choices=list(MODELS), help="the variant; read from our checkpoints, needed for published ones")
    onnx.add_argument("--wav2vec2", help="speech encoder architecture (default: the checkpoint's)")
    onnx.add_argument("--roberta", help="mmer's text encoder (default: the one recorded in <run_dir>/config.json)")
    hf = p.add_argument_group("hf")
    hf.add_argument("--ensemble", action="store_true", help="all the run's folds in one model, probabilities averaged")
    hf.add_argument("--include_text_encoder", action="store_true",
                    help="mmer: copy the text encoder's weights and tokenizer into the folder (else its Hub name is "
                         "recorded); needed for a local text encoder")
    hf.add_argument("--asr", help="mmer: a transformers speech recogniser the folder's pipeline runs where no "
                                  "transcript is given (else the model's own CTC head), e.g. openai/whisper-small; "
                                  "a local folder is copied into the folder (asr/)")
    hf.add_argument("--language", help="the recogniser's language (Whisper), e.g. en")
    hf.add_argument("--license", dest="license_id", default="other",
                    help="the model card's license (a Hub license id; default other: the corpus's terms apply)")
    hf.add_argument("--push", metavar="REPO_ID", help="upload the folder to the Hugging Face Hub as REPO_ID")
    hf.add_argument("--private", action="store_true", help="with --push: a private repository")
    args = p.parse_args(argv)
    misplaced = [name for name in (ONNX_ONLY if args.format == "hf" else HF_ONLY) if getattr(args, name)]
    if misplaced:
        always = " (the ONNX export always holds the text encoder, as text_encoder.onnx)" \
            if "include_text_encoder" in misplaced else ""
        p.error(f"--{', --'.join(misplaced)}: not a flag of --format {args.format}{always}")
    if args.ensemble and args.session:
        p.error("--ensemble exports every fold; drop --session, or --ensemble")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if args.format == "hf":
            record = export_hf(args.run_dir, args.out, args.session, args.ensemble, args.include_text_encoder,
                               args.asr, args.language, args.license_id, args.overwrite)
            print(f"exported {record['run']} (fold(s) {', '.join(record['folds'])}) to {args.out}; largest difference "
                  f"from the run's models on probabilities: {record['max_abs_diff_vs_run']:.2e}")
            if args.push:
                print(f"uploaded to {push(args.out, args.push, args.private)}")
            return record
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
