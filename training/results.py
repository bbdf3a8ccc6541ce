"""What a run reports: how its best epochs were chosen, its objectives and transcripts, and
the results files and table of its finished folds (training/report.py writes them)."""
from pathlib import Path

from dataio import corpus
from dataio.text_features import recorded_encoder
from models import MODELS, ModelConfig
from training.config import RunConfig
from training.inputs import Table
from training.report import format_table, run_label, write_results

OPTIMISTIC = "test (OPTIMISTIC: the best epoch is chosen on the test session, as upstream did)"


DEV_SELECTION = "dev split of the training sessions"


PUBLISHED = ("test (OPTIMISTIC: checkpoints without our selection record, e.g. the published ones, whose "
             "authors chose the best epoch on the test session)")


# what results.json names as a run's objectives (the 2023 settings)
OBJECTIVES = ("pooling", "text_pooling", "audio_dropout", "supcon_weight", "aug_weight", "contrastive", "temperature",
              "max_audio_samples")   # the encoder's files; the audio cut at evaluation


def selection_label(fold_metrics: dict, run_cfg: RunConfig) -> str:
    """How the best epochs were chosen: by this run's --select_on, or, re-evaluating checkpoints,
    by what each records (ours say; published ones were chosen on the test session upstream)."""
    if not run_cfg.eval_only:
        return OPTIMISTIC if run_cfg.select_on == "test" else DEV_SELECTION
    recorded = {m.get("selected_on") for m in fold_metrics.values()}
    labels = sorted({PUBLISHED if on is None else OPTIMISTIC if on == "test" else DEV_SELECTION for on in recorded})
    return f"{'; '.join(labels)} (re-evaluated checkpoints from {run_cfg.checkpoint_dir})"


def report(run_dir: Path, fold_metrics: dict, model_cfg: ModelConfig, run_cfg: RunConfig, table: Table) -> dict:
    selection = selection_label(fold_metrics, run_cfg)
    info = {"run": model_cfg.run, "alpha": model_cfg.alpha, "seed": run_cfg.seed,
            "objectives": {**{key: getattr(model_cfg, key) for key in OBJECTIVES},
                           "utterance_types": run_cfg.utterance_types},
            "selection": selection, "eval_only": run_cfg.eval_only,
            "classes": list(table.label_set.classes), "folds_from": table.scheme.describe(),
            "fold_unit": table.scheme.column if table.scheme.kind == "group" else "fold",
            "transcripts": corpus.transcript_record(run_cfg.csv_path, table.frame,
                                                    recorded_encoder(run_cfg.data_path_roberta)
                                                    if MODELS[model_cfg.run].uses_text else None)}
    if model_cfg.ssl_states:   # a frozen encoder's cached hidden states stood for the fine-tuned encoder
        info["frozen_encoder"] = {"encoder": model_cfg.wav2vec2, "states": model_cfg.ssl_states,
                                  "hidden_states": model_cfg.ssl_layers, "layer_weights": model_cfg.layer_weights,
                                  "layer_norm": model_cfg.probe_layer_norm, "data_path_ssl": run_cfg.data_path_ssl,
                                  **({"head": model_cfg.probe_head} if model_cfg.run == "probe" else {})}
        head = f"{model_cfg.probe_head} head, " if model_cfg.run == "probe" else ""
        info["objectives"]["frozen"] = (f"{head}frozen {Path(model_cfg.wav2vec2).name}, {model_cfg.layer_weights} layers"
                                        + (", layer norm" if model_cfg.probe_layer_norm else ""))
    if model_cfg.task != "categorical":   # what the attribute head predicted, on which scale
        info["task"] = {"task": model_cfg.task, "attributes": model_cfg.attributes,
                        "attribute_range": model_cfg.attribute_range, "dim_loss": model_cfg.dim_loss,
                        "dim_weight": model_cfg.dim_weight, "select_metric": run_cfg.select_metric}
    results = write_results(run_dir, fold_metrics, info)
    print(format_table(fold_metrics, f"{run_label(model_cfg.run, model_cfg.alpha, info['objectives'])}; best epoch: "
                                     f"{selection}",
                       info["fold_unit"]))
    return results

