"""A run's inputs: the corpus table read with its label set and folds, every input checked
at once before anything is written, and the corpus streamed from its decode-once caches."""
import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from dataio import corpus
from dataio.corpus import FoldScheme
from dataio.dataset import (Collator, DataError, EmotionDataset, stored_ssl_states, stored_text_features, stored_waves,
                            text_feature_width)
from dataio.labels import LabelSet, read_label_map
from dataio.text_features import text_encoder_width
from dataio.validate import feature_problems, file_problems, raise_problems, ssl_problems
from models import MODELS, ModelConfig
from models.checkpoint import find_checkpoints
from models.dimensional import normalise_attributes
from models.encoders import AudioInputSpec, audio_input_spec, encoder_config, min_samples, padding_is_exact
from training import imbalance
from training.config import RunConfig
from training.settings import ConfigError
from training.views import view_files
from utils import distributed

log = logging.getLogger("mmer")


@dataclass
class Corpus:
    """A run's corpus: the table, its items (audio and text features streamed from their
    caches, dataio/dataset.py), its folds."""
    table: pd.DataFrame
    dataset: EmotionDataset
    collate: Collator
    padding_exact: bool                # padded evaluation batches are exact (models.encoders.padding_is_exact)
    scheme: object = None              # corpus.FoldScheme
    label_set: object = None           # labels.LabelSet
    conv_cache: tuple | None = None   # (what it was computed with, the feature encoder's output per utterance)
    view_text: list | None = None      # text features of each utterance's augmented transcript (2023 views)

    @functools.cached_property
    def positions(self) -> dict:
        """Utterance name -> its index in the dataset."""
        return {name: i for i, name in enumerate(self.dataset.names)}

    def index_of(self, names) -> list[int]:
        return [self.positions[name] for name in names]



@dataclass
class Table:
    """The corpus table of a run, its label set and its folds (corpus.py)."""
    frame: pd.DataFrame
    label_set: LabelSet
    scheme: FoldScheme


def read_corpus_table(model_cfg: ModelConfig, run_cfg: RunConfig) -> Table:
    """The table, its label set and folds; sets the folds to run (default: all, or under
    --eval_only those with a checkpoint) and the model's label set (training: the table's;
    --eval_only: the checkpoints', another corpus's labels mapped onto it by --label_map).
    Under --task dimensional / both the rows whose label the set leaves out (MSP-Podcast's other
    and no agreement) are kept for their attributes, without a class (corpus.LEFT_OUT)."""
    label_map = read_label_map(run_cfg.label_map) if run_cfg.label_map else None
    trained = LabelSet.from_dict(model_cfg.labels) if run_cfg.eval_only else None
    frame, label_set = corpus.read_table(run_cfg.csv_path, label_map, trained,
                                         keep_unlabelled=model_cfg.task != "categorical")
    check_kept_unlabelled(frame, model_cfg, run_cfg)
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
    check_objective_columns(frame, label_set, model_cfg, run_cfg)
    return Table(frame, label_set, scheme)


def check_kept_unlabelled(frame: pd.DataFrame, model_cfg: ModelConfig, run_cfg) -> None:
    """Rows kept for their attributes only (their label left out by the label set) have no class:
    the self-contrastive loss would contrast them as one, so it is refused; the balanced
    sampler, which draws by class, never draws them, and it says so."""
    kept = int((frame["label_index"] == corpus.LEFT_OUT).sum())
    if not kept or run_cfg.eval_only:
        return
    if model_cfg.supcon_weight:
        raise ConfigError(f"{run_cfg.csv_path}: {kept} utterance(s) whose label the label set leaves out are kept for "
                          "the attributes (--task " + model_cfg.task + "), and --supcon_weight would contrast them as "
                          "one class; drop --supcon_weight, or give them a class with --label_map")
    if run_cfg.sampler == "balanced":
        log.warning("%s: --sampler balanced draws by class, so the %d utterance(s) kept for the attributes only are "
                    "never drawn for training", run_cfg.csv_path, kept)


def check_objective_columns(frame: pd.DataFrame, label_set: LabelSet, model_cfg: ModelConfig,
                            run_cfg: RunConfig) -> None:
    """The columns the training objectives read: the attributes of --task dimensional / both (their
    scale read from the table, or --attribute_range, and recorded in the model's settings, which
    map the predictions back to the corpus's units), and the votes of --soft_targets. Under
    --eval_only the checkpoints' attributes and scale hold; the table must rate them."""
    source = str(run_cfg.csv_path)
    if model_cfg.task != "categorical":
        if run_cfg.eval_only and model_cfg.attributes:
            missing = [name for name in model_cfg.attributes if name not in frame.columns]
            if missing:
                raise ConfigError(f"{source}: the checkpoints predict {', '.join(model_cfg.attributes)}, and the "
                                  f"table has no {', '.join(missing)} column to score them against (its columns: "
                                  f"{', '.join(map(str, frame.columns))})")
            imbalance.numeric_columns(frame, model_cfg.attributes, source)
        else:
            model_cfg.attributes = imbalance.table_attributes(frame, model_cfg.task, source)
            ratings = pd.DataFrame(imbalance.numeric_columns(frame, model_cfg.attributes, source),
                                   columns=model_cfg.attributes)
            model_cfg.attribute_range = list(imbalance.attribute_range(ratings, model_cfg.attributes,
                                                                       run_cfg.attribute_range, source))
    if model_cfg.soft_targets and not run_cfg.eval_only:
        imbalance.numeric_columns(frame, imbalance.vote_columns(frame, label_set.classes, source), source)


def objective_targets(frame: pd.DataFrame, label_set: LabelSet, model_cfg: ModelConfig, run_cfg: RunConfig):
    """-> (attributes [N, A] on the normalised [0, 1] scale, vote fractions [N, K]), each None
    where the run does not train on it."""
    source = str(run_cfg.csv_path)
    attributes = soft = None
    if model_cfg.task != "categorical":
        attributes = normalise_attributes(imbalance.numeric_columns(frame, model_cfg.attributes, source),
                                          *model_cfg.attribute_range)
    if model_cfg.soft_targets and not run_cfg.eval_only:
        soft = imbalance.numeric_columns(frame, imbalance.vote_columns(frame, label_set.classes, source), source)
    return attributes, soft


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
    if model_cfg.ssl_states:   # the cached hidden states stand for the audio, which is not read
        for kind, items in ssl_problems(table.frame["FileName"], run_cfg.data_path_ssl).items():
            problems[kind] += items
        if uses_text:
            for kind, items in feature_problems(table.frame["FileName"], run_cfg.data_path_roberta).items():
                problems[kind] += items
    else:
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
    gathered once into caches under --cache_dir (dataio/store.py) for all folds, epochs and
    runs; peak memory does not depend on the corpus's size."""
    uses_text = MODELS[model_cfg.run].uses_text
    frame = table.frame
    cache, shown, here = cache_dir(run_cfg), distributed.is_main(), distributed.is_local_main()
    if model_cfg.ssl_states:   # a frozen encoder's cached hidden states instead of the audio; batches pad exactly
        log.info("loading %d utterances (cached hidden states%s)", len(frame), " + text features" if uses_text else "")
        spec, padding_exact, waves = AudioInputSpec(), True, None
        states = stored_ssl_states(frame["FileName"], run_cfg.data_path_ssl, cache, shown, here)
    else:
        log.info("loading %d utterances (audio%s)", len(frame), " + text features" if uses_text else "")
        spec = audio_input_spec(model_cfg.wav2vec2)
        padding_exact = padding_is_exact(encoder_config(model_cfg.wav2vec2), spec)
        waves = stored_waves(corpus.audio_paths(frame, run_cfg.data_path_audio), spec, cache,
                             model_cfg.max_audio_samples, show_progress=shown, build_here=here)
        states = None
    text = view_text = None
    if uses_text:
        text = stored_text_features(frame["FileName"], run_cfg.data_path_roberta, cache, shown, here)
    if uses_text and run_cfg.data_path_roberta_view and not run_cfg.eval_only:
        view_text = stored_text_features(frame["FileName"], run_cfg.data_path_roberta_view, cache, False, here)
    attributes, soft_targets = objective_targets(frame, table.label_set, model_cfg, run_cfg)
    dataset = EmotionDataset(frame["FileName"], waves, frame["label_index"], frame["text"], text, run_cfg.ctc_text,
                             ssl_states=states, attributes=attributes, soft_targets=soft_targets)
    return Corpus(frame, dataset, Collator(spec), padding_exact, table.scheme, table.label_set, view_text=view_text)

