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
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from utils.threads import before_torch, configure_threads

before_torch()  # OpenMP reads its waiting policy when torch loads it (utils/threads.py)

import pandas as pd  # noqa: E402
import transformers
from tqdm.contrib.logging import logging_redirect_tqdm

from dataio import corpus
from dataio.corpus import UTTERANCE_TYPES, DataError, FoldScheme
from dataio.text_features import TextFeatureError, features_text_encoder, recorded_encoder, text_encoder_width
from dataio.labels import LabelError, LabelSet, read_label_map
from models import MODELS, ModelConfig
from models.base import AUDIO_DROPOUT, CTC_REDUCTIONS
from models.objectives import CONTRASTIVE_FORMS, POOLING_METHODS, TEXT_POOLING_METHODS
from models.encoders import (audio_input_spec, conv_cache_changes_training, conv_cache_refusal, encoder_config,
                             min_samples, padding_is_exact)
from training.loop import (AUDIO_VIEWS, Corpus, Views, audio_view_settings, build_training, check_skipped, compile_regions,
                      evaluate, fixed_lengths, log_epoch, make_loader, predict_split, report_long_targets,
                      tensorboard_writer, train_epoch, use_conv_cache, uses_layerdrop, view_files, warn_ctc_scale,
                      write_predictions)
from utils import distributed
from training import runinfo
from dataio.audio import AudioError
from models.checkpoint import (CheckpointError, checkpoint_path, find_checkpoints, load_checkpoint, model_settings,
                              restore_model, save_checkpoint)
from utils.cli import HelpFormatter, Parser, add_number
from dataio.dataset import Collator, EmotionDataset, stored_text_features, stored_waves, text_feature_width
from utils.device import check_precision, evaluation_precision, seed_everything, training_precision
from utils.hub import check_model_name
from utils.lock import LockedError, RunLock
from training.metrics import emotion_metrics, metrics_by_group
from dataio.text import CTC_TEXT
from training.report import format_table, write_results
from dataio.validate import InputProblems, feature_problems, file_problems, raise_problems

log = logging.getLogger("mmer")
OPTIMISTIC = "test (OPTIMISTIC: the best epoch is chosen on the test session, as upstream did)"
DEV_SELECTION = "dev split of the training sessions"
PUBLISHED = ("test (OPTIMISTIC: checkpoints without our selection record, e.g. the published ones, whose "
             "authors chose the best epoch on the test session)")


@dataclass
class RunConfig:
    """Run settings (paths, folds, schedule, devices); written beside the results."""
    csv_path: str = "data/iemocap.csv"
    data_path_audio: str = "data/audio"
    data_path_roberta: str = "data/roberta"
    roberta: str | None = None   # the text encoder of the features (their encoder.json), else roberta-base
    save_path: str = "runs"
    sessions: list | None = None  # the folds to run (IEMOCAP: its sessions); None: all the table's
    label_map: str | None = None
    fold_by: str | None = None
    kfold: int | None = None
    dev_split: str = "utterance"
    epochs: int = 100
    batch_size: int = 2
    accum_grad: int = 4
    learning_rate: float = 1e-5
    dev_fraction: float = 0.1
    select_on: str = "dev"
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    threads: int | None = None   # torch CPU threads; None: the CPUs this process may use
    num_workers: int = 0
    cache_dir: str | None = None   # the decoded audio and gathered features; None: <save_path>/cache
    batching: str = "bucket"
    gradient_checkpointing: bool = False
    compile: bool = False
    cache_conv_features: bool | None = None   # None: on where it changes nothing (see conv_cache_setting)
    eval_batch_size: int = 8
    eval_only: bool = False
    checkpoint_dir: str | None = None
    cross_corpus: bool = False
    preset: str | None = None
    audio_view: str = "speed,noise,mask"
    data_path_audio_view: str | None = None
    data_path_roberta_view: str | None = None
    ctc_text: str = "clean"
    utterance_types: str = "all"
    resume: bool = False
    overwrite: bool = False
    max_skipped_fraction: float = 0.05
    max_steps: int | None = None
    limit_utterances: int | None = None
    log_every: int = 25
    tensorboard: bool = False
    world_size: int = 1   # processes training each fold (torchrun), not a flag; the global batch depends on it
    precision_resolved: dict | None = None  # what --precision became on this device: {"training": ..., "evaluation": ...}


# A paper's whole configuration (--preset); flags given beside it win.
PRESETS = {
    "mmer2022": {},  # the defaults
    "mmer2023": {"run": "mmer", "alpha": 0.1, "supcon_weight": 0.1, "aug_weight": 0.1, "pooling": "max",
                 "text_pooling": "max", "audio_dropout": "ctc", "contrastive": "upstream",
                 "learning_rate": 5e-5, "max_audio_samples": 210_000, "audio_view": "speed,noise,mask"},
}

# Model settings given by flags (defaults: ModelConfig's). Under --eval_only the checkpoints'
# recorded values win (they hold that model); of a contradicting flag only these are honoured:
MODEL_FLAGS = ("run", "wav2vec2", "alpha", "ctc_reduction", "dropout", "specaugment", "pooling", "text_pooling",
               "audio_dropout", "supcon_weight", "aug_weight", "temperature", "contrastive", "max_audio_samples")
EVAL_OVERRIDABLE = ("wav2vec2", "max_audio_samples")
# what results.json names as a run's objectives (the 2023 settings)
OBJECTIVES = ("pooling", "text_pooling", "audio_dropout", "supcon_weight", "aug_weight", "contrastive", "temperature",
              "max_audio_samples")   # the encoder's files; the audio cut at evaluation
# run settings whose default, under --eval_only, is what the run being re-evaluated recorded
RECORDED_RUN = ("csv_path", "data_path_audio", "data_path_roberta", "roberta")


def parse_args(argv=None) -> tuple[ModelConfig, RunConfig]:
    """Flags -> the two configurations. Nonsense is refused here (exit code 2, one line), before
    any data is read; --eval_only fills what is not given from the run it re-evaluates."""
    p = Parser(description=__doc__, formatter_class=HelpFormatter)
    d, m = RunConfig(), ModelConfig()
    data = p.add_argument_group("data")
    data.add_argument("--csv_path", help="the corpus table (docs/CORPUS.md), e.g. from data_prep/iemocap_prep.py or "
                                         f"data_prep/import_emobox.py (default {d.csv_path})")
    data.add_argument("--data_path_audio", help="folder of the audio: <path> or <FileName>.wav "
                                                f"(default {d.data_path_audio})")
    data.add_argument("--data_path_roberta", help=f"folder of <FileName>.npy, mmer (default {d.data_path_roberta})")
    data.add_argument("--data_path_audio_view", help="2023 views: a folder of pre-made augmented audio, files named "
                                                     "<anything><FileName>.wav (upstream's --data_path_audio_augmented, "
                                                     "e.g. TTS re-syntheses), one picked per utterance and epoch; "
                                                     "replaces --audio_view")
    data.add_argument("--data_path_roberta_view", help="2023 views: features of each utterance's augmented transcript "
                                                       "(extract_roberta.py --text_column AugmentedText)")
    data.add_argument("--ctc_text", choices=list(CTC_TEXT), default=d.ctc_text,
                      help="the CTC targets: clean (non-speech tags removed, punctuation a word boundary) or upstream "
                           "(upstream's: characters outside the vocabulary deleted, so {LG} is spelled LG)")
    data.add_argument("--utterance_types", choices=UTTERANCE_TYPES, default=d.utterance_types,
                      help="IEMOCAP: train and test on improvised (impro) or scripted (script) dialogues only, or all")
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
    model = p.add_argument_group("model")
    model.add_argument("--run", choices=list(MODELS), help=f"which variant (default {m.run})")
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
    objectives = p.add_argument_group("the 2023 objectives (run.py --preset mmer2023 sets them all)")
    objectives.add_argument("--preset", choices=list(PRESETS), help="a paper's whole configuration; flags given "
                                                                    "beside it win")
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
    opt = p.add_argument_group("optimisation")
    add_number(opt, "--epochs", int, 1, default=d.epochs)
    add_number(opt, "--batch_size", int, 1, default=d.batch_size,
               help="utterances per micro-batch and process: under torchrun the global batch is batch_size x processes")
    add_number(opt, "--accum_grad", int, 1, default=d.accum_grad, help="micro-batches per optimizer step")
    add_number(opt, "--learning_rate", float, 0, low_open=True, default=d.learning_rate, help="AdamW learning rate")
    opt.add_argument("--batching", choices=["bucket", "random"], default=d.batching,
                     help="bucket: length-grouped batches in shuffled order (less padding); random: upstream's")
    add_number(opt, "--seed", int, 0, default=d.seed, help="seeds the model, the dev split and the batch order")
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
    add_number(ctl, "--eval_batch_size", int, 1, default=d.eval_batch_size,
               help="at most this many utterances per evaluation pass; results do not depend on it")
    ctl.add_argument("--eval_only", action="store_true",
                     help="evaluate <checkpoint_dir>/<session>_model.pt; flags not given are read from the "
                          "checkpoints and the run's config.json")
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
    preset = PRESETS.get(p.parse_known_args(argv)[0].preset, {})
    p.set_defaults(**{key: value for key, value in preset.items() if key not in MODEL_FLAGS})
    args = p.parse_args(argv)
    try:
        return resolve_configs(args, p, {key: value for key, value in preset.items() if key in MODEL_FLAGS})
    except (CheckpointError, DataError, TextFeatureError, LabelError, OSError) as err:
        p.error(str(err))


def resolve_configs(args, p, preset_model: dict) -> tuple[ModelConfig, RunConfig]:
    """The two configurations from the flags, the preset's model settings and, under
    --eval_only, what the re-evaluated run recorded."""
    d = RunConfig()
    if args.eval_only and not args.checkpoint_dir:
        p.error("--eval_only needs --checkpoint_dir DIR holding <session>_model.pt files")
    recorded_model, recorded_run = recorded_settings(args.checkpoint_dir) if args.eval_only else ({}, {})
    for key in RECORDED_RUN:
        if getattr(args, key) is None:
            setattr(args, key, recorded_run.get(key, getattr(d, key)))
    if args.sessions is not None and len(set(args.sessions)) < len(args.sessions):
        p.error(f"--sessions {' '.join(map(str, args.sessions))}: a session is named twice; name each once")
    if args.kfold and args.fold_by:
        p.error("--kfold and --fold_by both say how to make folds; give one")
    if args.label_map:
        read_label_map(args.label_map)  # refused here when malformed
    if args.cross_corpus and not args.eval_only:
        p.error("--cross_corpus evaluates trained checkpoints on another corpus: give it with --eval_only")
    if args.select_on == "dev" and args.dev_fraction <= 0 and not args.eval_only:
        p.error("--select_on dev needs --dev_fraction > 0")
    model_cfg = model_config(args, preset_model, recorded_model)
    check_model_name(model_cfg.wav2vec2, "--wav2vec2")
    check_views(args, model_cfg, p)
    run_cfg = RunConfig(**{k: getattr(args, k) for k in RunConfig.__dataclass_fields__ if hasattr(args, k)})
    run_cfg.cache_conv_features = conv_cache_setting(run_cfg.cache_conv_features, model_cfg, run_cfg, p)
    if run_cfg.select_on == "test":
        run_cfg.dev_fraction = 0.0  # upstream trained on all four training sessions
    for key in ("csv_path", "data_path_audio", "data_path_roberta", "save_path", "checkpoint_dir",
                "data_path_audio_view", "data_path_roberta_view"):
        setattr(run_cfg, key, absolute(getattr(run_cfg, key)))
    if MODELS[model_cfg.run].uses_text:
        run_cfg.roberta = features_text_encoder(run_cfg.data_path_roberta, run_cfg.roberta)
    return model_cfg, run_cfg


def model_config(args, preset: dict, recorded: dict) -> ModelConfig:
    """Each model setting from, in this order: a flag given; the preset; ModelConfig's default.
    Under --eval_only the checkpoints' recorded settings come first (they hold that model): a
    flag that contradicts one is named, and only --wav2vec2 and --max_audio_samples win."""
    defaults = ModelConfig()
    values = {}
    for key in MODEL_FLAGS:
        given = getattr(args, key)
        if key in recorded:
            values[key] = recorded[key]
            if given is not None and not same_setting(given, recorded[key]):
                values[key] = contradicted(key, given, recorded[key], args.checkpoint_dir)
        else:
            values[key] = given if given is not None else preset.get(key, getattr(defaults, key))
    values["wav2vec2"] = local_path(values["wav2vec2"])
    values["specaugment"] = bool(values["specaugment"])
    kept = {key: value for key, value in recorded.items()
            if key in ModelConfig.__dataclass_fields__ and key not in MODEL_FLAGS}   # labels, text_dim, ...
    return ModelConfig(**values, **kept)


def same_setting(given, recorded) -> bool:
    return str(given) == str(recorded) or local_path(str(given)) == str(recorded)


def contradicted(key: str, given, recorded, checkpoint_dir):
    """A flag beside --eval_only that contradicts what the checkpoints recorded -> the value used."""
    if key == "run":
        raise CheckpointError(f"{checkpoint_dir}: holds {recorded} models, but --run is {given}; "
                              f"drop --run or pass --run {recorded}")
    if key in EVAL_OVERRIDABLE:
        log.warning("--%s %s given; the run in %s recorded %s", key, given, checkpoint_dir, recorded)
        return given
    log.warning("--%s %s ignored: the checkpoints in %s hold a model with %s %s", key, given, checkpoint_dir,
                key, recorded)
    return recorded


def conv_cache_setting(asked: bool | None, model_cfg: ModelConfig, run_cfg, p) -> bool:
    """--cache_conv_features: on where asked and possible; by default, where it changes nothing."""
    config, spec = encoder_config(model_cfg.wav2vec2), audio_input_spec(model_cfg.wav2vec2)
    why_not = conv_cache_refusal(config, spec)
    if model_cfg.aug_weight and audio_view_settings(run_cfg.audio_view) is not None:
        why_not = why_not or "would not serve the augmented audio views, which change every epoch (--audio_view)"
    if asked and why_not:
        p.error(f"--cache_conv_features: {model_cfg.wav2vec2} {why_not}; it is offered for wav2vec2, HuBERT and WavLM "
                "encoders")
    if asked is None:
        return why_not is None and not conv_cache_changes_training(config, spec)
    if asked and conv_cache_changes_training(config, spec):
        log.info("--cache_conv_features: %s takes no attention mask, so training with the cache masks padded frames "
                 "where training without it lets them into the encoder", model_cfg.wav2vec2)
    return asked


def check_views(args, model_cfg: ModelConfig, p) -> None:
    """The augmentation loss needs views: augmented audio (--audio_view, or the pre-made files of
    --data_path_audio_view) or transcripts (--data_path_roberta_view, mmer only)."""
    try:
        audio = audio_view_settings(args.audio_view)
    except ValueError as err:
        p.error(str(err))
    if args.data_path_audio_view:
        if not Path(args.data_path_audio_view).is_dir():
            p.error(f"--data_path_audio_view {args.data_path_audio_view}: no such folder; give the folder of the "
                    "pre-made augmented audio (<anything><FileName>.wav)")
        args.audio_view = "none"   # the files are the audio views
    if args.data_path_roberta_view and not MODELS[model_cfg.run].uses_text:
        p.error(f"--data_path_roberta_view: {model_cfg.run} reads no text; augmented transcripts are for mmer")
    if (model_cfg.aug_weight and not args.eval_only and audio is None and not args.data_path_audio_view
            and not args.data_path_roberta_view):
        p.error("--aug_weight needs augmented views, and none is asked for: give --audio_view (e.g. speed,noise,mask), "
                "--data_path_audio_view (pre-made augmented audio) or, for mmer, --data_path_roberta_view (features "
                "of an augmented transcript column)")


def recorded_settings(checkpoint_dir) -> tuple[dict, dict]:
    """What the run in checkpoint_dir recorded -> (model settings, run settings): the model
    settings of its first checkpoint (ours: their ModelConfig; published: what their layout
    says, utils.checkpoint.model_settings), and the data paths and text encoder of its
    config.json (run.py's runs)."""
    folder = Path(checkpoint_dir)
    run_part = {}
    config = folder / "config.json"
    if config.is_file():
        try:
            saved = json.loads(config.read_text())
            run_part = {key: saved["run"].get(key) for key in RECORDED_RUN}
        except (json.JSONDecodeError, KeyError, AttributeError, TypeError) as err:
            raise CheckpointError(f"{config}: not the config.json run.py writes ({err}); give the settings as flags "
                                  "or remove the file") from err
    checkpoint = next(iter(find_checkpoints(folder).values()))
    return model_settings(load_checkpoint(checkpoint)), {key: value for key, value in run_part.items()
                                                           if value is not None}


def absolute(path: str | None) -> str | None:
    """Paths are recorded absolute, so a run folder's config works from any working directory."""
    return None if path is None else str(Path(path).expanduser().resolve())


def local_path(name_or_path: str) -> str:
    """A model given as a local folder is recorded absolute; a hub name stays as it is."""
    return absolute(name_or_path) if Path(name_or_path).expanduser().exists() else name_or_path


def setup_logging(run_dir: Path) -> None:
    """Console and <run_dir>/train.log, appended to (processes running other folds in parallel
    share it; their lines name their fold); progress bars write through logging_redirect_tqdm.
    Under torchrun only rank 0 writes the file; the other ranks print warnings only."""
    rank0 = distributed.is_main()
    tag = "" if distributed.world_size() == 1 else f"[rank {distributed.rank()}] "
    fmt = logging.Formatter(f"%(asctime)s {tag}%(levelname)s %(message)s", "%H:%M:%S")
    root = logging.getLogger()
    root.setLevel(logging.INFO if rank0 else logging.WARNING)
    for handler in [h for h in root.handlers if getattr(h, "_mmer", False)]:
        root.removeHandler(handler)
        handler.close()
    handlers = [logging.StreamHandler(sys.stderr)]
    if rank0:
        run_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(run_dir / "train.log"))
    for handler in handlers:
        handler.setFormatter(fmt)
        handler._mmer = True
        root.addHandler(handler)


# ---------------------------------------------------------------- data
@dataclass
class Table:
    """The corpus table of a run, its label set and its folds (corpus.py)."""
    frame: pd.DataFrame
    label_set: LabelSet
    scheme: FoldScheme


def read_corpus_table(model_cfg: ModelConfig, run_cfg: RunConfig) -> Table:
    """The table, its label set and folds; sets the folds to run (default: all, or under
    --eval_only those with a checkpoint) and the model's label set (training: the table's;
    --eval_only: the checkpoints', another corpus's labels mapped onto it by --label_map)."""
    label_map = read_label_map(run_cfg.label_map) if run_cfg.label_map else None
    trained = LabelSet.from_dict(model_cfg.labels) if run_cfg.eval_only else None
    frame, label_set = corpus.read_table(run_cfg.csv_path, label_map, trained)
    frame = corpus.select_utterance_types(frame, run_cfg.utterance_types)
    scheme = corpus.fold_scheme(frame, run_cfg.fold_by, run_cfg.kfold)
    if run_cfg.limit_utterances:
        frame = limit(frame, scheme, run_cfg.limit_utterances)
    if run_cfg.eval_only:
        scheme = evaluated_folds(scheme, run_cfg)
    elif run_cfg.sessions is None:
        run_cfg.sessions = list(scheme.names)
    model_cfg.labels = label_set.to_dict()
    model_cfg.num_classes = len(label_set.classes)
    return Table(frame, label_set, scheme)


def prepared_corpus(model_cfg: ModelConfig, run_cfg: RunConfig) -> Corpus:
    """The table read, checked and loaded into memory (the bench and tests use this)."""
    table = read_corpus_table(model_cfg, run_cfg)
    check_inputs(table, model_cfg, run_cfg)
    return load_corpus(table, model_cfg, run_cfg)


def evaluated_folds(scheme: FoldScheme, run_cfg: RunConfig) -> FoldScheme:
    """--eval_only: each checkpoint scores the fold of its name (default: every fold of the
    table that has one). With --cross_corpus, or where no checkpoint is named like a fold of
    the table, every checkpoint scores the whole table (another corpus)."""
    have = list(find_checkpoints(run_cfg.checkpoint_dir))
    if run_cfg.cross_corpus or not set(have) & set(scheme.names):
        if not run_cfg.cross_corpus:
            log.info("no checkpoint is named like a fold of %s: each scores the whole table", run_cfg.csv_path)
        scheme = FoldScheme("whole", None, tuple(have))
    if run_cfg.sessions is None:
        run_cfg.sessions = [name for name in scheme.names if name in have]
    return scheme


def limit(frame: pd.DataFrame, scheme: FoldScheme, n: int) -> pd.DataFrame:
    """--limit_utterances: the first n utterances of each test group (debug runs)."""
    column = scheme.column if scheme.kind == "group" else next(
        (c for c in frame.columns if c == "split" or c.startswith("split_")), "Label")
    return frame.groupby(frame[column].astype(str), group_keys=False).head(n).reset_index(drop=True)


def check_inputs(table: Table, model_cfg: ModelConfig, run_cfg: RunConfig) -> None:
    """Every input checked, all problems at once: the table (labels, folds, transcripts) and
    the files' headers. Nothing is decoded, and nothing is written before this passes."""
    uses_text = MODELS[model_cfg.run].uses_text
    needs_ctc = MODELS[model_cfg.run].has_ctc and model_cfg.alpha > 0 and not run_cfg.eval_only
    problems = corpus.table_problems(table.frame, table.scheme, run_cfg.sessions, table.label_set, needs_ctc,
                                     needs_training=not run_cfg.eval_only)
    file_problems(problems, corpus.audio_paths(table.frame, run_cfg.data_path_audio),
                  table.frame["FileName"], run_cfg.data_path_roberta if uses_text else None,
                  min_samples(model_cfg.wav2vec2))
    if run_cfg.data_path_roberta_view and not run_cfg.eval_only:
        for kind, items in feature_problems(table.frame["FileName"], run_cfg.data_path_roberta_view).items():
            problems[f"augmented-transcript views: {kind}"] += items
    if run_cfg.data_path_audio_view and not run_cfg.eval_only:
        found = view_files(table.frame["FileName"], run_cfg.data_path_audio_view)
        problems[f"utterances without a pre-made audio view in {run_cfg.data_path_audio_view} (a file named "
                 "<anything><FileName>.wav)"] += [name for i, name in enumerate(table.frame["FileName"])
                                                    if i not in found]
    if needs_ctc and corpus.text_source(table.frame) is None:
        problems["no transcripts for the CTC loss (the table has no text, Sentences or transcript column; add one "
                 "with data_prep/transcribe.py, or train with --alpha 0)"].append(run_cfg.csv_path)
    raise_problems(problems, run_cfg.csv_path)
    if uses_text:
        model_cfg.text_dim = check_text_width(table.frame, run_cfg)


def check_text_width(table: pd.DataFrame, run_cfg: RunConfig) -> int:
    """The features' width, which must be the text encoder's (a roberta-large name over
    roberta-base features would otherwise be recorded, and fail only in predict.py)."""
    width = text_feature_width(Path(run_cfg.data_path_roberta) / f"{table['FileName'].iloc[0]}.npy")
    hidden = text_encoder_width(run_cfg.roberta)
    if hidden is not None and hidden != width:
        raise DataError(f"{run_cfg.data_path_roberta}: the features are {width} wide, but the text encoder "
                        f"{run_cfg.roberta} gives {hidden}; pass the --roberta that made them, or re-extract them")
    return width


def cache_dir(run_cfg: RunConfig) -> Path:
    return Path(run_cfg.cache_dir or Path(run_cfg.save_path) / "cache")


def load_corpus(table: Table, model_cfg: ModelConfig, run_cfg: RunConfig) -> Corpus:
    """The corpus's items, streamed from disk: the audio decoded once and the text features
    gathered once into caches under --cache_dir (utils/store.py) for all folds, epochs and
    runs; peak memory does not depend on the corpus's size."""
    uses_text = MODELS[model_cfg.run].uses_text
    spec = audio_input_spec(model_cfg.wav2vec2)
    padding_exact = padding_is_exact(encoder_config(model_cfg.wav2vec2), spec)
    frame = table.frame
    log.info("loading %d utterances (audio%s)", len(frame), " + text features" if uses_text else "")
    cache, shown, here = cache_dir(run_cfg), distributed.is_main(), distributed.is_local_main()
    waves = stored_waves(corpus.audio_paths(frame, run_cfg.data_path_audio), spec, cache, model_cfg.max_audio_samples,
                         show_progress=shown, build_here=here)
    text = view_text = None
    if uses_text:
        text = stored_text_features(frame["FileName"], run_cfg.data_path_roberta, cache, shown, here)
    if uses_text and run_cfg.data_path_roberta_view and not run_cfg.eval_only:
        view_text = stored_text_features(frame["FileName"], run_cfg.data_path_roberta_view, cache, False, here)
    dataset = EmotionDataset(frame["FileName"], waves, frame["label_index"], frame["text"], text, run_cfg.ctc_text)
    return Corpus(frame, dataset, Collator(spec), padding_exact, table.scheme, table.label_set, view_text=view_text)


def fold_of(corpus_: Corpus, name: str, run_cfg: RunConfig) -> corpus.Fold:
    return corpus.make_fold(corpus_.table, corpus_.scheme, name, run_cfg.dev_fraction, run_cfg.seed,
                            run_cfg.dev_split)


# ---------------------------------------------------------------- one fold
def run_fold(session: str, corpus_: Corpus, model_cfg: ModelConfig, run_cfg: RunConfig,
             device, run_dir: Path, said: set | None = None) -> dict:
    """Train on the fold's training part, keep the best epoch (on dev, or on test if asked),
    then score it on the test part. A `<fold>_last.pt` after each epoch makes it resumable.
    Under torchrun every rank trains (DDP) and evaluates its share; rank 0 alone writes.
    said: the run's warnings given once (shared by its folds)."""
    said = set() if said is None else said
    seed_everything(run_cfg.seed)
    fold = fold_of(corpus_, session, run_cfg)
    log.info("fold %s: train %d, dev %d, test %d utterances", session, len(fold.train), len(fold.dev), len(fold.test))
    train_loader = make_loader(corpus_, fold.train, run_cfg, True, device)
    if model_cfg.aug_weight:  # each training batch gets a batch of its utterances' augmented views
        files = (view_files(corpus_.dataset.names, run_cfg.data_path_audio_view) if run_cfg.data_path_audio_view
                 else None)
        train_loader.views = Views(corpus_, audio_view_settings(run_cfg.audio_view), run_cfg.seed,
                                   corpus_.collate.spec, model_cfg.max_audio_samples, files)
    dev_loader = make_loader(corpus_, fold.dev, run_cfg, False, device) if len(fold.dev) else None
    test_loader = make_loader(corpus_, fold.test, run_cfg, False, device)
    model, optimizer = build_training(model_cfg, run_cfg, device)
    use_conv_cache(model, corpus_, run_cfg, device)
    rank0 = distributed.is_main()
    if rank0:
        report_long_targets(model, corpus_, fold.train)
    board = tensorboard_writer(run_dir, session) if run_cfg.tensorboard and rank0 else None

    def save_best(record):  # the fold's selected model, with the metrics it was chosen by
        save_checkpoint(run_dir / f"{session}_model.pt", model, model_config=model_cfg.to_dict(), session=session,
                        epoch=record["epoch"], selected_on=run_cfg.select_on,
                        metrics={"dev": record["dev"], "test": record["test"]})

    state = restore_fold(run_dir, session, model, optimizer, save_best) if run_cfg.resume else None
    state = state or runinfo.FoldState(session=session)
    if run_cfg.compile:
        compile_regions(model, static_shapes=fixed_lengths(run_cfg, corpus_.collate.spec))
    # after the restore: DDP starts by giving every rank rank 0's weights
    ddp = distributed.wrap_model(model, device, find_unused_parameters=uses_layerdrop(model))
    for epoch in range(state.epoch + 1, run_cfg.epochs + 1):
        start = time.perf_counter()
        distributed.seed_rank(run_cfg.seed, epoch)
        train_loader.batch_sampler.set_epoch(epoch)
        record = {"epoch": epoch, **train_epoch(model, train_loader, optimizer, run_cfg, device, epoch, ddp)}
        check_skipped(record, run_cfg, session)
        if epoch == 1 and rank0 and "ctc_scale" not in said and warn_ctc_scale(record, model_cfg, session):
            said.add("ctc_scale")
        record["dev"] = evaluate(model, dev_loader, device, run_cfg.precision) if dev_loader is not None else None
        record["test"] = evaluate(model, test_loader, device, run_cfg.precision)
        record["selected_on"] = run_cfg.select_on
        score = record["dev" if run_cfg.select_on == "dev" else "test"]["ua"]
        improved = score > state.best_score
        if improved:
            state.best_score, state.best_epoch = score, epoch
        state.epoch = epoch
        record["best_epoch"] = state.best_epoch
        record["seconds"] = round(time.perf_counter() - start, 3)
        if rank0:  # last.pt first: whatever a kill interrupts after it, restore() can redo from it
            state.save(run_dir, model, optimizer, record)
            if improved:
                save_best(record)
        log_epoch(session, record, board)
    return finish_fold(session, corpus_, model_cfg, run_cfg, device, run_dir, fold.test)


def restore_fold(run_dir: Path, session: int, model, optimizer, save_best) -> "runinfo.FoldState | None":
    """--resume: rank 0 restores `<session>_last.pt` (and repairs the stats and best model
    after a kill); the other ranks read the fold state and optimizer from the same file, and
    get the weights from rank 0 when DDP wraps the model. None: the fold starts afresh."""
    if distributed.is_main():
        return runinfo.FoldState.restore(run_dir, session, model, optimizer, save_best)
    path = run_dir / f"{session}_last.pt"
    if not path.is_file():
        return None
    payload = load_checkpoint(path)
    optimizer.load_state_dict(payload["optimizer"])
    return runinfo.FoldState(**payload["fold_state"])


def finish_fold(session, corpus_, model_cfg, run_cfg, device, run_dir: Path, test_idx) -> dict:
    """Score the best checkpoint on the test part, record the fold as finished."""
    distributed.barrier()  # every rank reads the best checkpoint, which rank 0 has now written
    metrics = evaluate_checkpoint(session, corpus_, model_cfg, run_cfg, device, run_dir, run_dir, test_idx)
    if distributed.is_main():
        runinfo.finish_fold(run_dir, session, metrics)
    return metrics


def evaluate_checkpoint(session, corpus_, model_cfg, run_cfg, device, checkpoint_dir: Path, run_dir: Path,
                        test_idx=None) -> dict:
    """Score `<checkpoint_dir>/<fold>_model.pt` on the fold's test part and write its predictions."""
    if test_idx is None:
        test_idx = fold_of(corpus_, session, run_cfg).test
    model, payload = restore_model(checkpoint_path(checkpoint_dir, session), model_cfg.run, model_cfg.wav2vec2)
    model.to(device)
    use_conv_cache(model, corpus_, run_cfg, device)
    loader = make_loader(corpus_, test_idx, run_cfg, False, device)
    names, y_true, y_pred, probs = predict_split(model, loader, device, run_cfg.precision)
    classes = corpus_.label_set.classes
    if distributed.is_main():
        write_predictions(run_dir / f"{session}_predictions.csv", names, y_true, y_pred, probs, classes)
    metrics = emotion_metrics(y_true, y_pred, len(classes))
    if corpus.typed(corpus_.table):  # IEMOCAP: improvised and scripted test utterances apart
        types = corpus_.table.set_index("FileName").loc[names, "utterance_type"].to_numpy()
        metrics["by_type"] = metrics_by_group(types, y_true, y_pred, len(classes))
    metrics["epoch"] = payload.get("epoch")
    metrics["selected_on"] = payload.get("selected_on")  # None: a checkpoint without our record (published)
    return metrics


# ---------------------------------------------------------------- main
def main(argv=None) -> dict | None:
    """Run the folds and write the results; -> the results (None on ranks other than 0)."""
    model_cfg, run_cfg = parse_args(argv)
    run_cfg.threads = configure_threads(run_cfg.threads)
    device = distributed.init_distributed(run_cfg.device)
    try:
        return run_folds(model_cfg, run_cfg, device)
    finally:
        distributed.shutdown()


def run_folds(model_cfg: ModelConfig, run_cfg: RunConfig, device) -> dict | None:
    """Read and check the inputs, take the run folder (rank 0: a lock per fold, held to the
    end), run the folds, write the results. Nothing is written into the folder before the
    inputs pass."""
    transformers.logging.disable_progress_bar()
    run_cfg.world_size = distributed.world_size()
    run_dir = Path(run_cfg.save_path) / model_cfg.run
    table = read_corpus_table(model_cfg, run_cfg)
    todo = folds_to_run(run_dir, run_cfg)
    if todo:  # a final `--resume` over finished folds only writes the results: no files to check or load
        check_inputs(table, model_cfg, run_cfg)
    resolve_precision(run_dir, model_cfg, run_cfg, device)
    with contextlib.ExitStack() as held:
        if distributed.is_main():
            runinfo.claim_run_dir(run_dir, model_cfg, run_cfg, todo, held,
                                  lambda: write_config(run_dir, model_cfg, run_cfg, table.frame))
        distributed.barrier()  # an --overwrite has emptied the folder before any rank reads it
        todo = folds_to_run(run_dir, run_cfg)  # another process may have finished one meanwhile
        setup_logging(run_dir)
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


def resolve_precision(run_dir: Path, model_cfg: ModelConfig, run_cfg: RunConfig, device) -> None:
    """What --precision means on this device (run_cfg.precision_resolved, recorded in config.json):
    --precision auto trains in bf16 where the device computes it natively. A resumed run keeps
    what its config.json recorded, so it does not change precision between machines (and says so)."""
    hidden = encoder_config(model_cfg.wav2vec2).hidden_size
    now = {"training": training_precision(device, run_cfg.precision, hidden),
           "evaluation": evaluation_precision(run_cfg.precision)}
    recorded = runinfo.recorded_setting(run_dir, "run", "precision_resolved") if run_cfg.resume else None
    if recorded and recorded != now and run_cfg.precision == "auto":
        log.warning("--precision auto: the run in %s trained in %s (its config.json); on %s it would resolve to %s, "
                    "but the resumed run keeps %s (pass --overwrite to start afresh in %s)", run_dir,
                    recorded["training"], device, now["training"], recorded["training"], now["training"])
        now = recorded
    run_cfg.precision_resolved = now


def write_config(run_dir: Path, model_cfg: ModelConfig, run_cfg: RunConfig, frame: pd.DataFrame) -> None:
    """config.json: the settings, data checksums and the features' text encoder (utils.runinfo)."""
    uses_text = MODELS[model_cfg.run].uses_text
    features = [Path(run_cfg.data_path_roberta) / f"{name}.npy" for name in frame["FileName"]] if uses_text else None
    runinfo.write_config(run_dir, model_cfg, run_cfg,
                         runinfo.data_checksums(run_cfg.csv_path, corpus.audio_paths(frame, run_cfg.data_path_audio),
                                                features),
                         recorded_encoder(run_cfg.data_path_roberta) if uses_text else None)


def folds_to_run(run_dir: Path, run_cfg: RunConfig) -> list[str]:
    """The requested folds less, with --resume, those finished in this folder already (by an
    earlier run, or by another process running folds in parallel)."""
    todo = []
    for session in run_cfg.sessions:
        if run_cfg.resume and not run_cfg.eval_only and runinfo.finished_fold(run_dir, session):
            log.info("fold %s: finished in an earlier run, kept", session)
        else:
            todo.append(session)
    return todo


def finished_folds(run_dir: Path) -> dict:
    """The test metrics of every finished fold in the folder, whichever process trained it:
    the results of a run are those of all its folds."""
    names = sorted((path.name[: -len("_result.json")] for path in run_dir.glob("*_result.json")),
                   key=corpus.natural_key)
    return {name: runinfo.finished_fold(run_dir, name) for name in names}


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
    results = write_results(run_dir, fold_metrics, info)
    print(format_table(fold_metrics, f"{model_cfg.run} (alpha {model_cfg.alpha}); best epoch: {selection}",
                       info["fold_unit"]))
    return results


if __name__ == "__main__":
    try:
        main()
    except (DataError, InputProblems, AudioError, CheckpointError, runinfo.RunDirError,
            runinfo.DivergedError, LockedError, LabelError, OSError) as err:
        logging.getLogger("mmer").error("%s", err)
        sys.exit(2)
