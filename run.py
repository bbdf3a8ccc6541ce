r"""Train and evaluate MMER and its baselines with leave-one-session-out cross-validation on
IEMOCAP, or with any corpus table's folds (docs/CORPUS.md); or re-evaluate saved / published
checkpoints with --eval_only, on their corpus or another one.

    python run.py --run mmer --alpha 0.1 --csv_path data/iemocap.csv \
        --data_path_audio data/audio --data_path_roberta data/roberta --save_path runs

Data-parallel on N GPUs (one process each, DDP; --batch_size is per process; the `--` keeps
torchrun from reading --run as its own --run-path):
    torchrun --nproc_per_node N -- run.py --run mmer ...
"""
import argparse
import contextlib
import copy
import dataclasses
import logging
import sys
from pathlib import Path

from utils.threads import before_torch, configure_threads

before_torch()  # OpenMP reads its waiting policy when torch loads it (utils/threads.py)

# the flags need no torch: they are checked before it loads (below), so nonsense is refused at once
from dataio.schema import CTC_TEXT_FORMS, UTTERANCE_TYPES  # noqa: E402
from models.errors import MMERError  # noqa: E402
from models.settings import (AUDIO_DROPOUT, CATEGORICAL_LOSSES, CLASS_WEIGHTS, CONTRASTIVE_FORMS,  # noqa: E402
                             CTC_REDUCTIONS, DIM_LOSSES, POOLING_METHODS, PROBE_HEADS, TASKS, TEXT_POOLING_METHODS,
                             VARIANTS, ModelConfig, layer_weights_choice)
from training.settings import (AUDIO_VIEWS, CALIBRATION, MODEL_FLAGS, PROBE_DEFAULTS, SAMPLERS,  # noqa: E402
                               SELECT_METRICS, RunConfig, presets, read_recipe, recipe_file)
from utils.cli import HelpFormatter, Parser, add_number  # noqa: E402

log = logging.getLogger("mmer")


# ---------------------------------------------------------------- flags
def parse_args(argv=None) -> tuple[ModelConfig, RunConfig]:
    """Flags -> the two configurations. A recipe (--preset NAME or --config FILE) sets defaults
    that flags given beside it override. Nonsense is refused here (exit code 2, one line), before
    any data is read; --eval_only fills what is not given from the run it re-evaluates."""
    p, args, recipe = read_flags(argv)
    try:
        return resolve_configs(args, {key: value for key, value in recipe.items() if key in MODEL_FLAGS})
    except (MMERError, OSError) as err:
        p.error(str(err))


def read_flags(argv=None) -> tuple[Parser, argparse.Namespace, dict]:
    """The flags and the recipe's settings as given, each checked against its type and range
    (exit code 2, one line): no torch, no files but the recipe."""
    p = Parser(description=__doc__, formatter_class=HelpFormatter)
    d, m = RunConfig(), ModelConfig()
    for add in (add_recipe_flags, add_data_flags, add_model_flags, add_objective_flags, add_task_flags,
                add_optimisation_flags, add_run_control_flags):
        add(p, d, m)
    try:
        recipe = recipe_settings(p, argv)
    except (MMERError, OSError) as err:
        p.error(str(err))
    p.set_defaults(**{key: value for key, value in recipe.items() if key not in MODEL_FLAGS})
    return p, p.parse_args(argv), recipe


def recipe_settings(p, argv) -> dict:
    """The settings of the recipe named by --preset or --config, typed and checked by the same
    flags that would set them; {} without one."""
    known = p.parse_known_args(argv)[0]
    path = recipe_file(known.preset, known.config)
    if path is None:
        return {}
    recipe = read_recipe(path)
    actions = {action.dest: action for action in p._actions}
    tokens = []
    for key, value in recipe.items():
        action = actions.get(key)
        if action is None or key in ("preset", "config", "help"):
            raise MMERError(f"{path}: {key!r} is not a setting of run.py; the settings are the flags of "
                            "run.py --help, without their dashes")
        tokens += recipe_tokens(action, value)
    parsed = p.parse_args(tokens)
    return {key: getattr(parsed, key) for key in recipe}


def recipe_tokens(action, value) -> list[str]:
    """One recipe setting as the command-line words that give it."""
    flag = action.option_strings[0]
    if value is None:
        return []
    if isinstance(action, argparse.BooleanOptionalAction):
        return [flag if value else f"--no-{flag[2:]}"]
    if isinstance(action, argparse._StoreTrueAction):
        return [flag] if value else []
    if isinstance(value, list):
        return [flag, *map(str, value)]
    return [flag, str(value)]


def layer_weights_flag(value: str) -> str:
    try:
        return layer_weights_choice(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix(f"--layer_weights {value!r}: ")) from err


def add_recipe_flags(p, d: RunConfig, m: ModelConfig) -> None:
    """A whole configuration from a file: the papers' (recipes/) or one a run wrote."""
    recipe = p.add_argument_group("recipe (flags given beside one override it)")
    recipe.add_argument("--preset", choices=presets(), help="a paper's whole configuration: recipes/iemocap/<NAME>.yaml")
    recipe.add_argument("--config", help="a recipe file (YAML, flag names without dashes), e.g. the recipe.yaml a run "
                                         "wrote into its folder, which re-runs it")


def add_data_flags(p, d: RunConfig, m: ModelConfig) -> None:
    """The corpus table, its files and folds, the caches."""
    data = p.add_argument_group("data")
    data.add_argument("--csv_path", help="the corpus table (docs/CORPUS.md), e.g. from data_prep/iemocap_prep.py or "
                                         f"data_prep/import_emobox.py (default {d.csv_path})")
    data.add_argument("--data_path_audio", help="folder of the audio: <path> or <FileName>.wav "
                                                f"(default {d.data_path_audio})")
    data.add_argument("--data_path_roberta", help=f"folder of <FileName>.npy, mmer (default {d.data_path_roberta})")
    data.add_argument("--data_path_ssl", help="folder of a frozen encoder's hidden states, <FileName>.npy of [states, "
                                              "frames, width] (data_prep/extract_ssl.py, or EmoBox's): --run probe "
                                              "reads only these and the table; mmer, cai_sota and unimodal_baseline "
                                              "then train on their learnable weighted sum instead of fine-tuning "
                                              "--wav2vec2")
    data.add_argument("--data_path_audio_view", help="2023 views: a folder of pre-made augmented audio, files named "
                                                     "<anything><FileName>.wav (upstream's --data_path_audio_augmented, "
                                                     "e.g. TTS re-syntheses), one picked per utterance and epoch; "
                                                     "replaces --audio_view")
    data.add_argument("--data_path_roberta_view", help="2023 views: features of each utterance's augmented transcript "
                                                       "(extract_roberta.py --text_column AugmentedText)")
    data.add_argument("--ctc_text", choices=CTC_TEXT_FORMS, default=d.ctc_text,
                      help="the CTC targets: clean (non-speech tags removed, punctuation a word boundary) or upstream "
                           "(upstream's: characters outside the vocabulary deleted, so {LG} is spelled LG)")
    data.add_argument("--utterance_types", choices=UTTERANCE_TYPES, default=None,
                      help="IEMOCAP: train and test on improvised (impro) or scripted (script) dialogues only, or all "
                           f"(default {d.utterance_types})")
    data.add_argument("--sessions", "--folds", nargs="+", default=None,
                      help="test folds to run, by name (IEMOCAP: its sessions 1-5; default: all the table's; with "
                           "--eval_only, those that have a checkpoint)")
    data.add_argument("--fold_by", help="leave one value of this column out (e.g. speaker) instead of the table's "
                                        "own folds (split_<k>, split, fold or session columns)")
    add_number(data, "--kfold", int, 2, default=None, help="K speaker-independent folds, stratified by label")
    data.add_argument("--label_map", help="label=class pairs (label= leaves it out) or a JSON file {label: class}: "
                                          "merges, order and, with --eval_only, another corpus's labels mapped onto "
                                          "the model's classes (default: IEMOCAP's 4 classes for IEMOCAP labels, "
                                          "else label_map.json beside the table, else the table's labels)")
    add_number(data, "--dev_fraction", float, 0, 1, high_open=True, default=d.dev_fraction,
               help="share of a fold's training part held out for model selection, where the table gives no dev split")
    data.add_argument("--dev_split", choices=["utterance", "speaker"], default=d.dev_split,
                      help="utterance: every training speaker gives its share, stratified by label; speaker: whole "
                           "speakers, so the dev split shares no speaker with training")
    add_number(data, "--num_workers", int, 0, default=d.num_workers, help="DataLoader worker processes")
    data.add_argument("--cache_dir", default=d.cache_dir,
                      help="where the audio is decoded once (16 kHz int16 or float32) and the text features gathered, "
                           "for every run on the same files (default: <save_path>/cache; delete it freely, it is "
                           "rebuilt when needed)")
    add_number(data, "--limit_utterances", int, 1, default=None,
               help="debug: keep only the first N utterances of each fold's test group")


def add_model_flags(p, d: RunConfig, m: ModelConfig) -> None:
    """The variant, its encoders and regularisation (ModelConfig)."""
    model = p.add_argument_group("model")
    model.add_argument("--run", choices=VARIANTS, help=f"which variant (default {m.run})")
    add_number(model, "--alpha", float, 0, default=None,
               help="weight of the CTC loss (mmer, cai_sota): loss = CE + alpha * (2 / B) * sum of the B utterances' "
                    f"CTC losses, upstream's CE + alpha * CTC_sum at its micro-batch of 2 (default {m.alpha})")
    model.add_argument("--ctc_reduction", choices=CTC_REDUCTIONS,
                       help="sum: (2 / B) x the sum of the B utterances' CTC losses, each summed over its frames "
                            "(upstream's value at its micro-batch of 2, at any B); batch_sum: the sum itself "
                            "(upstream's at any B: grows with the batch); mean: each divided by its target length "
                            f"(F.ctc_loss's 'mean') (default {m.ctc_reduction})")
    model.add_argument("--wav2vec2", help=f"speech encoder: hub name or local folder (default {m.wav2vec2})")
    model.add_argument("--roberta", help="text encoder the features came from (default: the one their encoder.json "
                                         "names, else roberta-base); recorded, refused when it contradicts encoder.json")
    add_number(model, "--dropout", float, 0, 1, high_open=True, default=None,
               help=f"on the encoder's last hidden state, the text embeddings and the fusion layers (default {m.dropout})")
    model.add_argument("--audio_dropout", choices=AUDIO_DROPOUT, default=None,
                       help="where the dropout on the encoder's output goes: all (before fusion, pooling and the CTC "
                            f"head, 2022) or ctc (the CTC head's input only, 2023) (default {m.audio_dropout})")
    model.add_argument("--specaugment", action="store_true", default=None, help="turn the encoder's SpecAugment on")
    frozen = p.add_argument_group("frozen encoders (--data_path_ssl; --run probe: SUPERB's and EmoBox's protocol)")
    frozen.add_argument("--layer_weights", type=layer_weights_flag, default=None,
                        help="learnable: a softmax over learnable weights, initialised equal, of every cached hidden "
                             "state (s3prl's Featurizer); last: the last state only; K: the encoder's hidden state K "
                             f"only (0 = the embedding output) (default {m.layer_weights})")
    frozen.add_argument("--probe_layer_norm", action="store_true", default=None,
                        help="layer-normalise each hidden state before weighing them (s3prl's option)")
    frozen.add_argument("--probe_head", choices=PROBE_HEADS, default=None,
                        help="--run probe's head: superb (EmoBox's: Linear to 256, ReLU, mean over the valid frames, "
                             f"Linear; emotion2vec's released head too) or linear (mean-pool, then Linear: a linear probe) "
                             f"(default {m.probe_head})")


def add_objective_flags(p, d: RunConfig, m: ModelConfig) -> None:
    """The 2023 objectives: contrastive losses, pooling, the audio cut and the views."""
    objectives = p.add_argument_group("the 2023 objectives (run.py --preset mmer2023 sets them all)")
    add_number(objectives, "--supcon_weight", float, 0, default=None,
               help=f"weight of the self-contrastive loss over each batch's labels (default {m.supcon_weight}; 2023: 0.1)")
    add_number(objectives, "--aug_weight", float, 0, default=None,
               help="weight of the contrastive loss between each utterance and its augmented view "
                    f"(default {m.aug_weight}; 2023: 0.1)")
    add_number(objectives, "--temperature", float, 0, low_open=True, default=None,
               help=f"of both contrastive losses (default {m.temperature})")
    objectives.add_argument("--contrastive", choices=CONTRASTIVE_FORMS, default=None,
                            help="the form of both: upstream (upstream's 2023 code: raw dot products, the self-"
                                 "contrastive log-softmax divided by the temperature afterwards, self pairs included) "
                                 "or normalised (ours: SupCon of Khosla et al. and InfoNCE on L2-normalised "
                                 f"projections) (default {m.contrastive})")
    objectives.add_argument("--pooling", choices=POOLING_METHODS, default=None,
                            help=f"of the audio frames (default {m.pooling}; 2023: max)")
    objectives.add_argument("--text_pooling", choices=TEXT_POOLING_METHODS, default=None,
                            help=f"of mmer's fused text stream (default {m.text_pooling}; 2023: max)")
    add_number(objectives, "--max_audio_samples", int, 400, default=None,
               help="cut the audio to this many samples at 16 kHz (2023: 210000, about 13 s)")
    objectives.add_argument("--audio_view", default=d.audio_view,
                            help=f"the augmented views' audio: a comma list of {', '.join(AUDIO_VIEWS)}, or none "
                                 "(then only the transcript is augmented)")


def add_task_flags(p, d: RunConfig, m: ModelConfig) -> None:
    """Dimensional emotion (arousal, valence, dominance) and imbalanced classes (models/dimensional.py)."""
    task = p.add_argument_group("dimensional emotion and imbalanced classes")
    task.add_argument("--task", choices=TASKS, default=None,
                      help="categorical: the classes; dimensional: the table's attribute columns (arousal, valence, "
                           "dominance) from an attribute head on the classifier's input, the classifier left untrained "
                           f"and unreported; both: the two heads, loss CE + dim_weight x attribute loss (default {m.task})")
    task.add_argument("--dim_loss", choices=DIM_LOSSES, default=None,
                      help="the attribute loss: ccc (1 - CCC averaged over the attributes, the MSP-Podcast baseline's) "
                           f"or mse, on the ratings normalised to [0, 1] (default {m.dim_loss})")
    add_number(task, "--dim_weight", float, 0, default=None,
               help=f"weight of the attribute loss under --task both (default {m.dim_weight})")
    task.add_argument("--attribute_range", default=None,
                      help="the attributes' rating scale low,high, mapped to [0, 1] for training and back for the "
                           "results (default: read from the table, its lowest and highest rating rounded out to whole "
                           "numbers: IEMOCAP 1,5; MSP-Podcast 1,7)")
    task.add_argument("--soft_targets", action="store_true", default=None,
                      help="train the categorical head on the annotators' vote fractions (the table's votes_<class> "
                           "columns, data_prep/import_msppodcast.py) instead of the consensus label")
    task.add_argument("--class_weights", choices=CLASS_WEIGHTS, default=None,
                      help="weigh each class in the categorical loss, from the fold's training labels: balanced = "
                           f"N / (K x n_class) (the MSP-Podcast baseline's), sqrt = its square root (default {m.class_weights})")
    task.add_argument("--loss", choices=CATEGORICAL_LOSSES, default=None,
                      help=f"the categorical loss: ce (cross-entropy) or focal (Lin et al. 2017) (default {m.loss})")
    add_number(task, "--focal_gamma", float, 0, default=None,
               help=f"focal loss's gamma; 0 is cross-entropy (default {m.focal_gamma})")
    task.add_argument("--sampler", choices=SAMPLERS, default=d.sampler,
                      help="balanced: each training batch drawn with replacement, every class about equally often "
                           "(dataio/sampling.py); default: every training utterance once per epoch")
    task.add_argument("--select_metric", choices=SELECT_METRICS, default=None,
                      help="the dev metric that picks the best epoch: ua, macro_f1 or ccc_mean (the mean CCC of the "
                           "attributes; --task dimensional or both) (default ua; --task dimensional: ccc_mean)")


def add_optimisation_flags(p, d: RunConfig, m: ModelConfig) -> None:
    """The optimiser, batching and the speed options."""
    opt = p.add_argument_group("optimisation")
    probe = " ".join(f"{key} {value}" for key, value in PROBE_DEFAULTS.items())
    add_number(opt, "--epochs", int, 1, default=None, help=f"(default {d.epochs}; --run probe: {probe})")
    add_number(opt, "--batch_size", int, 1, default=None,
               help="utterances per micro-batch and process: under torchrun the global batch is batch_size x processes "
                    f"(default {d.batch_size})")
    add_number(opt, "--accum_grad", int, 1, default=None, help=f"micro-batches per optimizer step (default {d.accum_grad})")
    add_number(opt, "--learning_rate", float, 0, low_open=True, default=None,
               help=f"AdamW learning rate (default {d.learning_rate}; weight decay 0.01, --run probe: 0, EmoBox's Adam)")
    opt.add_argument("--batching", choices=["bucket", "random"], default=d.batching,
                     help="bucket: length-grouped batches in shuffled order (less padding); random: upstream's")
    add_number(opt, "--seed", int, 0, default=None,
               help=f"seeds the model, the dev split, --kfold's folds and the batch order (default {d.seed})")
    opt.add_argument("--seeds", nargs="+", type=int, default=None,
                     help="run the configuration once per seed, into <save_path>/<run>/seed_<s>/, and write the "
                          "seed table (seeds.md/.csv: mean ± std over the seeds) into <save_path>/<run>/")
    opt.add_argument("--gradient_checkpointing", action="store_true",
                     help="recompute encoder activations in the backward pass (less memory, ~30%% slower)")
    opt.add_argument("--compile", action="store_true",
                     help="torch.compile the encoder layers and fusion layers (GPU; the first epoch compiles); "
                          "for encoders that take an attention mask, audio is then padded to fixed lengths "
                          "(at most 19%% longer, masked)")
    opt.add_argument("--cache_conv_features", action=argparse.BooleanOptionalAction, default=None,
                     help="run the frozen convolutional feature encoder once per utterance, alone, and keep its output "
                          "in memory (about 100 KB per audio second, in every process). Default: on where it changes "
                          "nothing (layer-norm feature encoders with an attention mask, e.g. wav2vec2-large-lv60); "
                          "for wav2vec2-base it is exact as scoring each utterance alone, and training then masks "
                          "padded frames instead of letting them into the encoder, so it is asked for explicitly")
    add_number(opt, "--max_skipped_fraction", float, 0, 1, default=d.max_skipped_fraction,
               help="stop when more than this share of an epoch's optimizer steps had non-finite gradients")


def add_run_control_flags(p, d: RunConfig, m: ModelConfig) -> None:
    """Where results go, devices, model selection, --eval_only, resuming, debug limits."""
    ctl = p.add_argument_group("run control")
    ctl.add_argument("--save_path", default=d.save_path, help="results go to <save_path>/<run>/")
    ctl.add_argument("--device", default=d.device,
                     help="auto (CUDA when present; cuda:<LOCAL_RANK> under torchrun), cpu, cuda, cuda:N")
    ctl.add_argument("--precision", choices=["auto", "fp32", "bf16"], default=d.precision,
                     help="auto: training in bf16 autocast where the device computes bf16 natively (a GPU; a CPU with "
                          "AVX512-BF16/AMX for speech encoders of hidden size >= 512: 2.1x faster at base size), "
                          "else fp32; evaluation in fp32 (exact). bf16: both in bf16. fp32: both in fp32")
    add_number(ctl, "--threads", int, 1, default=None,
               help="torch CPU threads (default: the CPUs this process may use, from its affinity and cgroup quota, "
                    "shared among torchrun's processes on the machine)")
    ctl.add_argument("--select_on", choices=["dev", "test"], default=d.select_on,
                     help="pick the best epoch on the dev split; 'test' reproduces upstream (optimistic, no dev split)")
    ctl.add_argument("--calibrate", choices=CALIBRATION, default=d.calibrate,
                     help="dev: after the best epoch is chosen, fit one temperature per fold on its dev split "
                          "(minimising NLL), store it in the checkpoint and apply it to the test predictions, "
                          "predict.py, the service and the exports (ECE, NLL and Brier reported before and after; "
                          "the argmax never changes). none: the plain softmax, as upstream (docs/CALIBRATION.md)")
    add_number(ctl, "--eval_batch_size", int, 1, default=d.eval_batch_size,
               help="at most this many utterances per evaluation pass; results do not depend on it")
    ctl.add_argument("--eval_only", action="store_true",
                     help="evaluate <checkpoint_dir>/<session>_model.pt on the test set of its fold; flags not given "
                          "are read from the checkpoints and the run's config.json, which also fixes the folds "
                          "(--kfold, --seed, --fold_by, --utterance_types, --label_map, --limit_utterances: a "
                          "contradicting one is refused)")
    ctl.add_argument("--checkpoint_dir", default=None, help="folder of <session>_model.pt (.safetensors) files")
    ctl.add_argument("--cross_corpus", action="store_true",
                     help="--eval_only on another corpus: every checkpoint scores the whole table (its labels mapped "
                          "onto the model's classes by --label_map) instead of the fold of its name")
    ctl.add_argument("--resume", action="store_true",
                     help="continue an interrupted run in the same folder: finished folds are kept, the "
                          "unfinished one restarts from its last completed epoch")
    ctl.add_argument("--overwrite", action="store_true", help="replace the results already in <save_path>/<run>")
    add_number(ctl, "--max_steps", int, 1, default=None, help="debug: optimizer steps per epoch")
    add_number(ctl, "--log_every", int, 1, default=d.log_every, help="micro-batches between progress-bar updates")
    ctl.add_argument("--tensorboard", action="store_true",
                     help="also write TensorBoard scalars to <save_path>/<run>/tensorboard/ (pip install tensorboard)")


if __name__ == "__main__":
    read_flags()  # nonsense is refused here, in a second: the imports below load torch

import transformers  # noqa: E402
from tqdm.contrib.logging import logging_redirect_tqdm  # noqa: E402

from training import runinfo  # noqa: E402
from training.comparison import compare, markdown_table  # noqa: E402
from training.config import record_config, resolve_configs, resolve_precision  # noqa: E402
from training.folds import evaluate_checkpoint, finished_folds, folds_to_run, run_fold  # noqa: E402
from training.inputs import check_inputs, load_corpus, read_corpus_table  # noqa: E402
from training.results import report  # noqa: E402
from utils import distributed  # noqa: E402
from utils.device import check_precision  # noqa: E402
from utils.lock import RunLock  # noqa: E402


# ---------------------------------------------------------------- the fold loop
def main(argv=None) -> dict | None:
    """Run the folds and write the results; -> the results (None on ranks other than 0; with
    --seeds, {seed: results})."""
    model_cfg, run_cfg = parse_args(argv)
    run_cfg.threads = configure_threads(run_cfg.threads)
    device = distributed.init_distributed(run_cfg.device)
    try:
        if run_cfg.seeds:
            return run_seeds(model_cfg, run_cfg, device)
        return run_folds(model_cfg, run_cfg, device, Path(run_cfg.save_path) / model_cfg.run)
    finally:
        distributed.shutdown()


def run_seeds(model_cfg: ModelConfig, run_cfg: RunConfig, device) -> dict | None:
    """--seeds: the configuration once per seed, each a whole run in <run>/seed_<s>/ (its own
    config.json and recipe.yaml, which re-run that seed), then the seed table beside them."""
    parent, results = Path(run_cfg.save_path) / model_cfg.run, {}
    for seed in run_cfg.seeds:
        log.info("--seeds: seed %d of %s", seed, " ".join(map(str, run_cfg.seeds)))
        results[seed] = run_folds(copy.deepcopy(model_cfg), dataclasses.replace(run_cfg, seed=seed, seeds=None),
                                  device, parent / f"seed_{seed}")
    if distributed.is_main():
        table = compare([parent / f"seed_{seed}" for seed in run_cfg.seeds], parent, seeds=True)
        log.info("the seed table: %s\n%s", parent / "seeds.md", markdown_table(table))
        return results
    return None


def run_folds(model_cfg: ModelConfig, run_cfg: RunConfig, device, run_dir: Path) -> dict | None:
    """Read and check the inputs, take the run folder (rank 0: a lock per fold, held to the
    end), run the folds, write the results. Nothing is written into the folder before the
    inputs pass."""
    transformers.logging.disable_progress_bar()
    run_cfg.world_size = distributed.world_size()
    table = read_corpus_table(model_cfg, run_cfg)
    todo = folds_to_run(run_dir, run_cfg)
    if todo:  # a final `--resume` over finished folds only writes the results: no files to check or load
        check_inputs(table, model_cfg, run_cfg)
    resolve_precision(run_dir, model_cfg, run_cfg, device)
    with contextlib.ExitStack() as held:
        if distributed.is_main():
            runinfo.claim_run_dir(run_dir, model_cfg, run_cfg, todo, held,
                                  lambda: record_config(run_dir, model_cfg, run_cfg, table.frame))
        distributed.barrier()  # an --overwrite has emptied the folder before any rank reads it
        todo = folds_to_run(run_dir, run_cfg)  # another process may have finished one meanwhile
        runinfo.setup_logging(run_dir)
        check_precision(device, run_cfg.precision)
        log.info("run %s on %s (precision %s: training %s, evaluation %s; %d process%s), folds %s (%s)",
                 model_cfg.run, device, run_cfg.precision, run_cfg.precision_resolved["training"],
                 run_cfg.precision_resolved["evaluation"],
                 run_cfg.world_size, "es" if run_cfg.world_size > 1 else "", " ".join(todo),
                 table.scheme.describe())
        fold_metrics = {}
        if todo:
            loaded = load_corpus(table, model_cfg, run_cfg)
            said = set()  # warnings given once per run, not once per fold
            with logging_redirect_tqdm():
                for session in todo:
                    if run_cfg.eval_only:
                        fold_metrics[session] = evaluate_checkpoint(session, loaded, model_cfg, run_cfg, device,
                                                                    Path(run_cfg.checkpoint_dir), run_dir)
                    else:
                        fold_metrics[session] = run_fold(session, loaded, model_cfg, run_cfg, device, run_dir, said)
        if not distributed.is_main():
            return None
        with RunLock(run_dir / ".run.lock", str(run_dir), wait=60):  # processes of other folds may report too
            finished = fold_metrics if run_cfg.eval_only else finished_folds(run_dir)
            return report(run_dir, finished, model_cfg, run_cfg, table)


if __name__ == "__main__":
    try:
        main()
    except (MMERError, OSError) as err:
        logging.getLogger("mmer").error("%s", err)
        sys.exit(2)
