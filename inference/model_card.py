"""The model card of a shared model folder (README.md with the Hub's metadata): what the run
measured, read from its results.json (WA, UA and macro-F1 per fold, and the attributes' CCC for
a run trained with --task dimensional or both, their mean and spread, the protocol and how the best epochs were chosen, as the run labels it), where its transcripts came
from, its corpus and label set, intended use and limits, and the paper to cite."""
import json

import yaml

METRICS = (("wa", "accuracy", "WA (accuracy)"), ("ua", "recall", "UA (mean per-class recall)"),
           ("macro_f1", "f1", "macro-F1"))
VARIANTS = {"mmer": "MMER: wav2vec 2.0 audio and the transcript's text features, fused by cross-modal attention, "
                    "with an auxiliary CTC loss",
            "cai_sota": "wav2vec 2.0 with an auxiliary CTC loss (Cai et al. 2021), audio only",
            "unimodal_baseline": "wav2vec 2.0, audio only"}
CITATION = """@inproceedings{ghosh2023mmer,
  title     = {{MMER}: Multimodal Multi-task Learning for Speech Emotion Recognition},
  author    = {Ghosh, Sreyan and Tyagi, Utkarsh and Ramaneswaran, S and Srivastava, Harshvardhan and Manocha, Dinesh},
  booktitle = {Proc. Interspeech 2023},
  year      = {2023},
  note      = {arXiv:2203.16794}
}"""


def corpus_name(results: dict, config: dict) -> str:
    """The corpus the run was trained on, as its table's folder names it (IEMOCAP by its session folds)."""
    folds_from = str(results.get("folds_from", ""))
    csv = str((config.get("run") or {}).get("csv_path") or "")
    if "session" in folds_from.lower() or "iemocap" in csv.lower():
        return "IEMOCAP"
    parts = [p for p in csv.replace("\\", "/").split("/")[:-1] if p and p not in (".", "prepared", "data")]
    return parts[-1] if parts else "the run's corpus"


def metadata(results: dict, run: str, corpus: str, license_id: str, folds: list[str]) -> dict:
    """The card's YAML header: pipeline tag, tags, license, dataset and the Hub's model-index
    (the mean over the exported folds' test results, as results.json gives them per fold)."""
    chosen = [results["folds"][fold] for fold in folds]
    where = f"mean over test fold(s) {', '.join(folds)}"
    metrics = [{"type": kind, "value": 100 * sum(m[key] for m in chosen) / len(chosen), "name": f"{name}, {where}"}
               for key, kind, name in METRICS if all(key in m for m in chosen)]
    metrics += [{"type": "ccc", "value": sum(m[f"ccc_{a}"] for m in chosen) / len(chosen),
                 "name": f"CCC of {a} (concordance correlation), {where}"} for a in attribute_names(chosen[0])]
    return {"pipeline_tag": "audio-classification", "library_name": "transformers", "license": license_id,
            "tags": list(dict.fromkeys(["speech-emotion-recognition", "mmer", run, "wav2vec2", "audio-classification",
                                        "custom_code"])),
            "datasets": [corpus],
            "model-index": [{"name": f"mmer-{run}-{corpus}".replace(" ", "-"), "results": [{
                "task": {"type": "audio-classification", "name": "Speech emotion recognition"},
                "dataset": {"name": corpus, "type": corpus},
                "metrics": metrics}]}]}


def attribute_names(fold: dict) -> list[str]:
    """The attributes a fold's results score (ccc_<name>, besides their mean), in their order."""
    return [key[len("ccc_"):] for key in fold if key.startswith("ccc_") and key != "ccc_mean"]


def fold_table(results: dict, folds: list[str], unit: str) -> str:
    """The classes' metrics per fold (not for a run trained with --task dimensional) and the
    attributes' CCC (a run with an attribute head)."""
    first = next(iter(results["folds"].values()))
    tables = [class_table(results, folds, unit)] if "wa" in first else []
    if attribute_names(first):
        tables.append(attribute_table(results, folds, unit, attribute_names(first)))
    return "\n\n".join(tables)


def attribute_table(results: dict, folds: list[str], unit: str, names: list[str]) -> str:
    lines = [f"| test {unit} | " + " | ".join(f"CCC {a}" for a in names) + " | CCC mean | in this folder |",
             "|---|" + "---:|" * (len(names) + 1) + "---|"]
    for fold, m in results["folds"].items():
        lines.append(f"| {fold} | " + " | ".join(f"{m[f'ccc_{a}']:.3f}" for a in names + ['mean']) +
                     f" | {'yes' if fold in folds else ''} |")
    return "\n".join(lines)


def class_table(results: dict, folds: list[str], unit: str) -> str:
    lines = [f"| test {unit} | WA (%) | UA (%) | macro-F1 (%) | utterances | in this folder |", "|---|---:|---:|---:|---:|---|"]
    for fold, m in results["folds"].items():
        lines.append(f"| {fold} | {100 * m['wa']:.2f} | {100 * m['ua']:.2f} | {100 * m['macro_f1']:.2f} | "
                     f"{m.get('n', '')} | {'yes' if fold in folds else ''} |")
    mean, std = results.get("mean", {}), results.get("std", {})
    if mean:
        lines.append("| mean ± std | " + " | ".join(f"{100 * mean[k]:.2f} ± {100 * std.get(k, 0):.2f}"
                                                  for k, _, _ in METRICS) + " | | |")
    return "\n".join(lines)


def outputs_line(config: dict, classes: list[str]) -> str:
    """What the model answers: its classes and, trained with --task dimensional or both, its attributes."""
    model = config.get("model") or {}
    task = model.get("task", "categorical")
    line = "" if task == "dimensional" else \
        f"Classes, in the order of its probabilities: {', '.join(f'`{c}`' for c in classes)}."
    if task != "categorical":
        low, high = model.get("attribute_range") or ("?", "?")
        line += (f"{' ' if line else ''}Attributes: {', '.join(f'`{a}`' for a in model.get('attributes') or [])}, "
                 f"on the corpus's rating scale {low}-{high} (the pipeline's `attributes`)")
        line += ("; trained with --task dimensional, it predicts no class." if task == "dimensional" else ".")
    return line


def transcripts_line(results: dict, run: str, text_encoder: dict | None, asr: dict | None) -> str:
    if run != "mmer":
        return "This variant reads no text; its CTC head (cai_sota) learnt the transcripts as an auxiliary task."
    record = results.get("transcripts") or {}
    source = record.get("text_features") or "the table's reference transcripts (Sentences)"
    line = f"Training read text features of {source}"
    if record.get("asr"):
        line += f" (speech recogniser {record['asr'].get('model')}, WER {record['asr'].get('wer')})"
    line += f", embedded by `{(text_encoder or {}).get('name')}`."
    bundled = f", bundled in `{asr['bundled']}/`" if asr and asr.get("bundled") else ""
    fallback = (f"the recorded speech recogniser `{asr['model']}`{bundled}" if asr else
                "the model's own CTC head (greedy), whose transcripts are worse than a recogniser's")
    return line + f" Without a transcript, the pipeline reads {fallback}, and says so."


def model_card(results: dict, config: dict, run: str, folds: list[str], classes: list[str], license_id: str,
               text_encoder: dict | None, asr: dict | None) -> str:
    corpus = corpus_name(results, config)
    unit = results.get("fold_unit", "fold")
    header = yaml.safe_dump(metadata(results, run, corpus, license_id, folds), sort_keys=False, allow_unicode=True)
    example = ', transcript="I can\'t believe you did that!"' if run == "mmer" else ""
    what = f"{'an ensemble of the folds ' + ', '.join(folds) if len(folds) > 1 else 'the model of fold ' + folds[0]}"
    return f"""---
{header}---

# MMER speech emotion recognition: {run} on {corpus}

{VARIANTS.get(run, run)}; {what} of a {run} run, exported by the MMER repository's `export.py`.
{outputs_line(config, classes)}

## Use

```python
from transformers import pipeline

pipe = pipeline("audio-classification", model="THIS_FOLDER_OR_REPO", trust_remote_code=True)
pipe("clip.wav"{example})   # [{{"label": ..., "score": ...}}, ...]
```

`transformers.AutoModel.from_pretrained(..., trust_remote_code=True)` gives the network itself
(`.folds`, the run's fold models); the MMER repository's `EmotionRecognizer.from_pretrained`
reads this folder too. Audio: 16 kHz mono (other rates are resampled with soxr where installed),
normalised per recording by the speech encoder's feature extractor, as in training.
{transcripts_line(results, run, text_encoder, asr)}

## Results

Protocol: {results.get('folds_from', 'the run’s folds')}, one model per test {unit}; the best epoch was
chosen on the {results.get('selection', 'not recorded')}. Seed {results.get('seed')}, alpha {results.get('alpha')}.
Per fold, from the run's results.json (percent; WA = accuracy, UA = mean per-class recall):

{fold_table(results, folds, unit)}

The metadata above gives the mean over the fold(s) in this folder. Objectives: `{json.dumps(results.get('objectives', {}))}`.

## Intended use and limits

For research on speech emotion recognition: scoring recordings like those of {corpus} (acted or
elicited dyadic speech, English) into the classes above. Categorical emotion labels are a coarse,
culturally bound description and the corpus's actors are few; expect lower scores on other
speakers, languages, microphones and spontaneous speech, and do not use the scores to make
decisions about people. The weights inherit the terms of the corpus they were trained on
({corpus}'s licence) and of the pretrained encoders.

## Citation

```bibtex
{CITATION}
```
"""
