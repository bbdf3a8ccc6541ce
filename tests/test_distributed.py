"""Data-parallel training (torchrun + DDP, gloo on CPU): the per-rank share of every epoch,
the loss scaling that makes N processes at batch b equal one process at batch N x b,
gathered evaluation, rank 0 as the only writer, and resuming a killed 2-process run.

Run as a script (under torchrun) this file is the probe: run.main with hooks that record,
per rank, the utterances and losses of every micro-batch and any file rank > 0 writes."""
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import run
from models.base import SpeechEmotionModel
from utils import distributed
from dataio.dataset import BucketBatchSampler, RandomBatchSampler
from utils.distributed import DistributedBucketSampler, RoundRobinBatchSampler
from training import folds as training_folds

REPO = Path(__file__).resolve().parents[1]
METRICS = ("wa", "ua", "macro_f1", "confusion")
LOSSES = ("loss", "ce_loss", "ctc_loss")
ENCODER_DROPOUTS = ("layerdrop", "hidden_dropout", "attention_dropout", "activation_dropout",
                    "feat_proj_dropout", "final_dropout")


# ---------------------------------------------------------------- the samplers
def rank_samplers(base_cls, lengths, batch_size, world, seed=0):
    return [DistributedBucketSampler(base_cls(lengths, batch_size * world, shuffle=True, seed=seed), r, world)
            for r in range(world)]


@pytest.mark.parametrize("base_cls", [BucketBatchSampler, RandomBatchSampler])
def test_the_ranks_share_each_global_batch_of_the_single_process_epoch(base_cls):
    for world in (1, 2, 3, 5):
        for n in (1, 2, 7, 9, 23, 64):
            for batch_size in (1, 2, 3):
                lengths = np.random.default_rng(n).integers(100, 1000, n)
                single = base_cls(lengths, batch_size * world, shuffle=True, seed=0)
                ranks = rank_samplers(base_cls, lengths, batch_size, world)
                for epoch in (0, 1, 2):
                    single.set_epoch(epoch)
                    for sampler in ranks:
                        sampler.set_epoch(epoch)
                    shards = [sampler.shards() for sampler in ranks]
                    assert {len(s) for s in shards} == {len(single)}  # same number of steps on every rank
                    seen = []
                    for step, batch in enumerate(single.batches()):
                        real = [shard for shard, scale in (rank[step] for rank in shards) if scale > 0]
                        assert sorted(i for shard in real for i in shard) == sorted(batch)
                        scales = [rank_shards[step][1] for rank_shards in shards]
                        assert sum(scales) == pytest.approx(world)  # DDP's mean over ranks = the batch mean
                        seen += batch
                    assert sorted(seen) == list(range(n))  # every utterance exactly once per epoch


def test_a_short_last_batch_gives_the_idle_ranks_a_zero_weight_filler():
    ranks = rank_samplers(BucketBatchSampler, np.arange(100, 109), batch_size=2, world=4)  # 9 = 8 + 1
    last = [sampler.shards()[-1] for sampler in ranks]
    assert [scale for _, scale in last] == [4.0, 0.0, 0.0, 0.0]
    assert all(indices == last[0][0] for indices, _ in last)


def test_evaluation_batches_are_dealt_whole_and_once():
    lengths = np.random.default_rng(0).integers(100, 1000, 23)
    single = BucketBatchSampler(lengths, 4, shuffle=False).batches()
    for world in (2, 3, 7):
        dealt = [RoundRobinBatchSampler(BucketBatchSampler(lengths, 4, shuffle=False), r, world).batches()
                 for r in range(world)]
        assert sorted(map(tuple, sum(dealt, []))) == sorted(map(tuple, single))
        assert max(map(len, dealt)) - min(map(len, dealt)) <= 1


def test_loss_scales_give_the_gradient_of_the_global_batch():
    """sum over ranks of scale_r / world * grad(mean loss of shard r), as DDP averages it,
    equals grad(mean loss of the global batch), for full, short and filler shards."""
    torch.manual_seed(0)
    features, targets = torch.randn(9, 5), torch.randn(9)
    weight = torch.randn(5, requires_grad=True)

    def grad_of_mean(indices, scale=1.0):
        weight.grad = None
        (((features[indices] @ weight - targets[indices]) ** 2).mean() * scale).backward()
        return weight.grad.clone()

    world = 4
    ranks = rank_samplers(BucketBatchSampler, np.arange(9), batch_size=2, world=world)
    for step, batch in enumerate(BucketBatchSampler(np.arange(9), 2 * world, shuffle=True).batches()):
        averaged = sum(grad_of_mean(*sampler.shards()[step]) for sampler in ranks) / world
        torch.testing.assert_close(averaged, grad_of_mean(batch))


def test_the_evaluation_gather_keeps_one_row_per_utterance_in_name_order():
    names, labels, predictions, probs = distributed.gather_predictions(
        ["b", "a"], [1, 0], np.array([[0.1, 0.9, 0, 0], [0.8, 0.2, 0, 0]]))
    assert names == ["a", "b"] and list(labels) == [0, 1] and list(predictions) == [0, 1]


# ---------------------------------------------------------------- the probe (rank side)
@contextlib.contextmanager
def probe(record: dict, nan_at=None):
    """Record, for every epoch trained, each micro-batch's utterances, loss scale and loss, and
    a checksum of the weights after it; nan_at=(epoch, micro-batch) makes that loss NaN."""
    original_fold, original_train, original_loss = run.run_fold, training_folds.train_epoch, SpeechEmotionModel.loss
    record["epochs"] = []

    class RecordingLoader:
        def __init__(self, loader):
            self.loader, self.batch_sampler = loader, loader.batch_sampler
            self.views = getattr(loader, "views", None)  # the 2023 views the loader's batches get

        def __len__(self):
            return len(self.loader)

        def __iter__(self):
            for batch, scale in zip(self.loader, distributed.loss_scales(self.batch_sampler)):
                record["epochs"][-1]["batches"].append([batch.names, scale])
                yield batch

    def run_fold(session, *args, **kwargs):
        record["session"] = session
        return original_fold(session, *args, **kwargs)

    def train_epoch(model, loader, optimizer, run_cfg, device, epoch, ddp=None):
        record["epochs"].append({"session": record["session"], "epoch": epoch, "batches": [], "losses": []})
        stats = original_train(model, RecordingLoader(loader), optimizer, run_cfg, device, epoch, ddp)
        record["epochs"][-1]["weights"] = float(sum(p.detach().double().sum() for p in model.parameters()))
        return stats

    def loss(self, *args, **kwargs):
        losses = original_loss(self, *args, **kwargs)
        now = record["epochs"][-1]
        if nan_at == (now["epoch"], len(now["batches"])):
            losses["total"] = losses["total"] * float("nan")
        now["losses"].append(losses["total"].item())
        return losses

    run.run_fold, training_folds.train_epoch, SpeechEmotionModel.loss = run_fold, train_epoch, loss
    try:
        yield record
    finally:
        run.run_fold, training_folds.train_epoch, SpeechEmotionModel.loss = original_fold, original_train, original_loss


def watch_writes(save_path: Path, writes: list) -> None:
    """Audit hook: note every file opened for writing, renamed, removed or made under save_path."""
    save_path = os.path.abspath(save_path)
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND

    def hook(event, args):
        if event == "open" and args[0] is not None:
            mode, flags = args[1], args[2]
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & write_flags)
            paths = [args[0]] if writing else []
        elif event in ("os.rename", "os.remove", "os.mkdir", "os.rmdir", "os.chmod"):
            paths = [args[0]]
        else:
            return
        writes.extend(str(p) for p in paths if isinstance(p, (str, Path)) and
                      os.path.abspath(p).startswith(save_path))

    sys.addaudithook(hook)


def probe_main(argv: list[str]) -> None:
    """Under torchrun: run.main(argv) with the probe; rank<r>.json in $PROBE_DIR. $PROBE_NAN
    ("epoch,micro,rank") injects a NaN loss; $PROBE_SNAPSHOT_AFTER=epoch: rank 0 copies the
    save folder to $PROBE_DIR/snapshot once that epoch is saved (what a kill then leaves)."""
    out, rank = Path(os.environ["PROBE_DIR"]), int(os.environ["RANK"])
    save_path = Path(argv[argv.index("--save_path") + 1])
    nan = os.environ.get("PROBE_NAN")
    nan_epoch, nan_micro, nan_rank = map(int, nan.split(",")) if nan else (0, 0, -1)
    snapshot_after = int(os.environ.get("PROBE_SNAPSHOT_AFTER", 0))
    original_log_epoch = training_folds.log_epoch

    def log_epoch(session, epoch_record, board=None):  # called once rank 0 has saved the epoch
        original_log_epoch(session, epoch_record, board)
        if epoch_record["epoch"] == snapshot_after and rank == 0:
            shutil.copytree(save_path, out / "snapshot")

    record = {"writes": []}
    if rank > 0:
        watch_writes(save_path, record["writes"])
    training_folds.log_epoch = log_epoch
    with probe(record, nan_at=(nan_epoch, nan_micro) if rank == nan_rank else None):
        run.main(argv)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps(record))


# ---------------------------------------------------------------- the tests (launcher side)
def torchrun(argv, probe_dir: Path, nproc: int = 2, timeout: float = 300, **env):
    """Launch this file under torchrun (standalone rendezvous on a free port, gloo on CPU).
    `--` ends torchrun's own flags: its parser would take run.py's --run for its --run-path.
    A launch still running after `timeout` seconds (processes waiting on each other) is
    stopped, workers included, and fails the test."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "--", __file__, *map(str, argv)]
    environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PROBE_DIR": str(probe_dir),
                   **{k: str(v) for k, v in env.items()}}
    with subprocess.Popen(command, cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as launch:
        try:
            _, stderr = launch.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            stderr = stop(launch)
            pytest.fail(f"{nproc} processes still running after {timeout} s (waiting on each other?): "
                        f"{stderr[-4000:]}")
    assert launch.returncode == 0, stderr[-4000:]
    return [json.loads((probe_dir / f"rank{r}.json").read_text()) for r in range(nproc)]


def stop(launch: subprocess.Popen) -> str:
    """End a torchrun launch and its workers -> its stderr. The workers run in sessions of their
    own, which outlive a killed torchrun and keep its pipes open; on SIGTERM torchrun stops them
    itself (SIGTERM, SIGKILL 30 s later). Should it not, they are killed by process id."""
    children = Path(f"/proc/{launch.pid}/task/{launch.pid}/children")
    workers = [int(pid) for pid in children.read_text().split()] if children.exists() else []
    launch.terminate()
    try:
        return launch.communicate(timeout=60)[1]
    except subprocess.TimeoutExpired:
        for pid in [launch.pid, *workers]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return launch.communicate()[1]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread, as torchrun gives its children (OMP_NUM_THREADS=1): on a busy 2-core
    machine two spinning OpenMP threads per process make the tiny runs tens of times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def exact_encoder(demo, tmp_path_factory) -> Path:
    """The demo's tiny wav2vec2 made deterministic (no dropout, no LayerDrop) and padding-exact
    (layer-norm feature encoder with an attention mask): a shard padded to its own longest
    utterance then gives the same outputs as in the global batch. (wav2vec2-base, with no
    mask, sees its padding: there 2 x b equals 1 x 2b only up to that.)"""
    folder = tmp_path_factory.mktemp("encoder") / "wav2vec2"
    shutil.copytree(demo.wav2vec2_model, folder)
    edit_json(folder / "config.json", feat_extract_norm="layer", do_stable_layer_norm=True,
              **{key: 0.0 for key in ENCODER_DROPOUTS})
    edit_json(folder / "preprocessor_config.json", return_attention_mask=True)
    return folder


def edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.fixture(scope="module")
def two_vs_one(demo, exact_encoder, tmp_path_factory):
    """mmer without dropout, folds 1 and 2: 2 processes at batch 2, and 1 process at batch 4."""
    root = tmp_path_factory.mktemp("ddp")
    flags = dict(run="mmer", epochs=2, accum_grad=2, dropout=0, wav2vec2=exact_encoder)
    ranks = torchrun(demo.flags(**flags, batch_size=2, save_path=root / "two"), root / "probe")
    single = {}
    with probe(single):
        run.main(demo.flags(**flags, batch_size=4, save_path=root / "one"))
    return root, flags, ranks, single


def test_two_processes_see_every_training_utterance_once_per_epoch(two_vs_one):
    _, _, ranks, single = two_vs_one
    assert [(e["session"], e["epoch"]) for e in single["epochs"]] == [("1", 1), ("1", 2), ("2", 1), ("2", 2)]
    for k, epoch in enumerate(single["epochs"]):
        steps = zip(*(rank["epochs"][k]["batches"] for rank in ranks))
        merged = [sorted(n for names, scale in step if scale > 0 for n in names) for step in steps]
        assert merged == [sorted(names) for names, _ in epoch["batches"]]  # the same global batches, step by step
        everything = sum(merged, [])
        assert len(everything) == len(set(everything)) == 22  # the fold's training set, once


def test_two_processes_at_batch_b_match_one_process_at_batch_2b(two_vs_one):
    _, _, ranks, single = two_vs_one
    for k in (0, 2):  # the first epoch of each fold
        shards = [zip(rank["epochs"][k]["batches"], rank["epochs"][k]["losses"]) for rank in ranks]
        merged = [sum(scale / 2 * loss for (_, scale), loss in step) for step in zip(*shards)]
        # micro-batches 1-2 come before the first optimizer step, 3-4 after it; the losses are CTC
        # sums near 100, so float32 rounding in a different summation order is ~1e-5 absolute
        np.testing.assert_allclose(merged[:4], single["epochs"][k]["losses"][:4], rtol=1e-6, atol=1e-6)
    assert [e["weights"] for e in ranks[0]["epochs"]] == [e["weights"] for e in ranks[1]["epochs"]]


@pytest.fixture(scope="module")
def two_vs_one_2023(demo, exact_encoder, tmp_path_factory):
    """The 2023 terms (self-contrastive and augmentation, upstream's form) across processes:
    2 processes at batch 2 and 1 process at batch 4, one fold, one epoch, no dropout."""
    root = tmp_path_factory.mktemp("ddp2023")
    flags = dict(run="mmer", epochs=1, sessions="1", accum_grad=2, dropout=0, wav2vec2=exact_encoder,
                 supcon_weight=0.1, aug_weight=0.1, pooling="max", text_pooling="max")
    ranks = torchrun(demo.flags(**flags, batch_size=2, save_path=root / "two"), root / "probe")
    single = {}
    with probe(single):
        run.main(demo.flags(**flags, batch_size=4, save_path=root / "one"))
    return ranks, single


def test_contrastive_terms_span_the_processes_so_two_at_b_equal_one_at_2b(two_vs_one_2023):
    """Each anchor meets the projections of the whole global batch (gathered with their
    gradient), and each process's share makes DDP's average the whole batch's gradient."""
    ranks, single = two_vs_one_2023
    shards = [zip(rank["epochs"][0]["batches"], rank["epochs"][0]["losses"]) for rank in ranks]
    merged = [sum(scale / 2 * loss for (_, scale), loss in step) for step in zip(*shards)]
    np.testing.assert_allclose(merged[:2], single["epochs"][0]["losses"][:2], rtol=1e-6)  # before the first step
    np.testing.assert_allclose(merged, single["epochs"][0]["losses"], rtol=1e-4)  # every step: the same training
    assert ranks[0]["epochs"][0]["weights"] == ranks[1]["epochs"][0]["weights"]
    assert ranks[0]["epochs"][0]["weights"] == pytest.approx(single["epochs"][0]["weights"], rel=1e-5)


def test_a_stand_in_shard_with_the_2023_terms_neither_hangs_nor_changes_the_training(demo, exact_encoder,
                                                                                     tmp_path):
    """Two utterances of session 1 and session 2's six: fold 1 holds one of session 2's out for
    dev and trains on 5, so at 2 processes x batch 2 one global batch holds a single utterance and
    rank 1 runs a stand-in shard (loss scale 0). Its contrastive terms must still reach back
    through the gathered pools (whose backward is a collective), or rank 0 waits forever; and
    they must add exactly nothing: the run is one process at batch 4's."""
    table = pd.read_csv(demo.csv)
    pd.concat([table[table["session"] == 1].head(2), table[table["session"] == 2]]).to_csv(
        tmp_path / "eight.csv", index=False)
    flags = dict(run="mmer", epochs=1, sessions="1", accum_grad=1, dropout=0, wav2vec2=exact_encoder,
                 supcon_weight=0.1, aug_weight=0.1, csv_path=tmp_path / "eight.csv")
    ranks = torchrun(demo.flags(**flags, batch_size=2, save_path=tmp_path / "two"), tmp_path / "probe", timeout=180)
    single = {}
    with probe(single):
        run.main(demo.flags(**flags, batch_size=4, save_path=tmp_path / "one"))
    epochs = [rank["epochs"][0] for rank in ranks]
    sizes = [len(names) for names, _ in single["epochs"][0]["batches"]]  # in the shuffled order
    assert sorted(sizes) == [1, 4]
    assert [scale == 0 for _, scale in epochs[1]["batches"]] == [size == 1 for size in sizes]  # the stand-in
    assert np.isfinite(epochs[1]["losses"]).all()  # its terms add exactly 0, never NaN
    steps = zip(*[zip(epoch["batches"], epoch["losses"]) for epoch in epochs])
    merged = [sum(scale / 2 * loss for (_, scale), loss in step) for step in steps]
    np.testing.assert_allclose(merged, single["epochs"][0]["losses"], rtol=1e-4)
    assert epochs[0]["weights"] == epochs[1]["weights"]
    assert epochs[0]["weights"] == pytest.approx(single["epochs"][0]["weights"], rel=1e-5)


def test_only_rank_0_writes_and_it_writes_what_one_process_writes(two_vs_one):
    root, _, ranks, _ = two_vs_one
    assert ranks[1]["writes"] == []
    assert sorted(p.name for p in (root / "two" / "mmer").iterdir()) == \
        sorted(p.name for p in (root / "one" / "mmer").iterdir())
    config = json.loads((root / "two" / "mmer" / "config.json").read_text())
    assert config["run"]["world_size"] == 2 and config["run"]["batch_size"] == 2


def test_distributed_evaluation_equals_single_process_evaluation(demo, two_vs_one, tmp_path):
    root, flags, _, _ = two_vs_one
    two = root / "two" / "mmer"
    again = run.main(demo.flags(run="mmer", wav2vec2=flags["wav2vec2"], save_path=tmp_path, eval_only=True,
                                checkpoint_dir=two, epochs=None, learning_rate=None))
    assert fold_metrics(again) == fold_metrics(json.loads((two / "results.json").read_text()))
    for session in (1, 2):
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "mmer" / f"{session}_predictions.csv"),
                                      pd.read_csv(two / f"{session}_predictions.csv"), atol=1e-6)


def test_folds_run_in_parallel_processes_write_the_sequential_results(demo, two_vs_one, tmp_path):
    """`--sessions s --resume` per process into one folder (here fold 2 in a child process while
    fold 1 runs in this one), then `--resume` once more for the combined results: the same
    files and numbers as the sequential single-process run."""
    root, flags, _, _ = two_vs_one
    argv = demo.flags(**flags, batch_size=4, save_path=tmp_path, resume=True)
    child = subprocess.Popen([sys.executable, "run.py", *argv, "--sessions", "2"], cwd=REPO,
                             env={**os.environ, "OMP_NUM_THREADS": "1"},
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run.main([*argv, "--sessions", "1"])
    assert child.wait(timeout=300) == 0, child.stderr.read()[-3000:]
    results = run.main(argv)
    sequential, parallel = root / "one" / "mmer", tmp_path / "mmer"
    assert fold_metrics(results) == fold_metrics(json.loads((sequential / "results.json").read_text()))
    assert sorted(p.name for p in parallel.iterdir()) == sorted(p.name for p in sequential.iterdir())
    for session in (1, 2):
        assert_same_stats(parallel, sequential, session)
    assert json.loads((parallel / "config.json").read_text())["run"]["resume"]


def fold_metrics(results: dict) -> dict:
    return {s: {k: m[k] for k in METRICS} for s, m in results["folds"].items()}


def assert_same_stats(run_dir: Path, reference: Path, session: int) -> None:
    """Same epochs, steps, skips and dev/test metrics; the logged losses equal up to float
    rounding (CPU kernels in two processes may add in another order)."""
    def stats(folder):
        lines = (folder / f"{session}_stats.txt").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]

    got, want = stats(run_dir), stats(reference)
    np.testing.assert_allclose([[r.pop(k) for k in LOSSES] for r in got],
                               [[r.pop(k) for k in LOSSES] for r in want], rtol=1e-5)
    assert got == want


def test_a_killed_two_process_run_resumes_to_the_same_stats(demo, tmp_path):
    """cai_sota with alpha 0 (frozen CTC head) on the encoder with LayerDrop and dropout
    (DDP's unused-parameter search, per-rank dropout streams); one NaN loss on rank 1 only
    must skip the step on both ranks. The folder is then put back as it was after epoch 1,
    as a kill would have left it, and resumed."""
    flags = demo.flags(run="cai_sota", alpha=0, sessions="1", epochs=2, batch_size=2, accum_grad=2,
                       max_skipped_fraction=0.5, save_path=tmp_path / "run")
    straight = torchrun(flags, tmp_path / "p1", PROBE_NAN="1,2,1", PROBE_SNAPSHOT_AFTER=1)
    shutil.move(tmp_path / "run", tmp_path / "straight")
    shutil.copytree(tmp_path / "p1" / "snapshot", tmp_path / "run")
    run_dir = tmp_path / "run" / "cai_sota"
    assert (run_dir / "1_last.pt").is_file() and not (run_dir / "1_result.json").exists()
    resumed = torchrun([*flags, "--resume"], tmp_path / "p2")
    assert [e["epoch"] for e in resumed[1]["epochs"]] == [2]  # rank 1 too went on from epoch 2
    assert_same_stats(run_dir, tmp_path / "straight" / "cai_sota", 1)
    first = json.loads((run_dir / "1_stats.txt").read_text().splitlines()[0])
    assert first["skipped_steps"] == 1 and first["nonfinite_micro_batches"] == 1
    weights = [[e["weights"] for e in rank["epochs"]] for rank in straight]
    assert weights[0] == weights[1]  # the step was skipped on both ranks
    assert weights[0][0] != weights[0][1]  # and training went on


if __name__ == "__main__":
    probe_main(sys.argv[1:])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_two_node_launch_on_one_host_writes_what_one_node_writes(demo, two_vs_one, tmp_path):
    """The README's multi-node command, both nodes on localhost (one process each, gloo, c10d
    rendezvous): the same files, stats and metrics as the two processes of one node."""
    root, flags, _, _ = two_vs_one
    port = free_port()
    argv = [str(a) for a in demo.flags(**flags, batch_size=2, save_path=tmp_path / "nodes")]
    environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PROBE_DIR": str(tmp_path / "probe")}
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(k),
                               "--nproc_per_node", "1", "--rdzv_backend", "c10d", "--rdzv_id", "mmer-test",
                               "--rdzv_endpoint", f"localhost:{port}", "--", __file__, *argv],
                              cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k in (0, 1)]
    outputs = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][1][-3000:] + outputs[1][1][-3000:]
    two_nodes, one_node = tmp_path / "nodes" / "mmer", root / "two" / "mmer"
    assert sorted(p.name for p in two_nodes.iterdir()) == sorted(p.name for p in one_node.iterdir())
    for session in (1, 2):
        assert_same_stats(two_nodes, one_node, session)
    assert fold_metrics(json.loads((two_nodes / "results.json").read_text())) == \
        fold_metrics(json.loads((one_node / "results.json").read_text()))
    assert json.loads((two_nodes / "config.json").read_text())["run"]["world_size"] == 2
