"""Ragged arrays on disk: one array per utterance (audio samples, text features, the frozen
feature encoder's frames), concatenated in one file with an index, read back one item at a
time with pread. Peak memory does not depend on how many items a store holds, and every
process on a machine reads through the same page cache instead of holding its own copy
(docs/PERFORMANCE.md, "Corpora bigger than memory", says why pread and not mmap).

A store is a folder `<cache>/<kind>/<key>` holding `data.bin`, `index.npy` ([N, 2] int64:
first row, rows) and `meta.json` (dtype, trailing shape, scale, what it was built from). It
is built once, under a lock, into a temporary folder renamed into place, so a crash leaves
no half store and concurrent runs build it once. The key is a hash of what the items are
made from (paths, sizes, modification times and the settings), so a changed file or setting
builds a new store."""
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np

from utils.lock import LockedError, RunLock

log = logging.getLogger(__name__)
DATA, INDEX, META = "data.bin", "index.npy", "meta.json"


class Arrays(list):
    """Items held in memory, with the interface of a Store (prediction, tests, small inputs)."""

    def lengths(self) -> np.ndarray:
        return np.array([len(a) for a in self], dtype=np.int64)

    def read(self, i: int, rows: int | None = None) -> np.ndarray:
        return self[i][:rows]


class Store:
    """A built store, opened for reading: `store[i]` or `store.read(i, rows)` is item i (its
    first `rows` rows) as a new float32 array (a float16 store: float16); nothing but the index is held."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.meta = json.loads((self.folder / META).read_text())
        self.index = np.load(self.folder / INDEX, allow_pickle=False)
        self.dtype = np.dtype(self.meta["dtype"])
        self.tail = tuple(self.meta["tail"])
        self.scale = self.meta["scale"]
        self.row_bytes = self.dtype.itemsize * int(np.prod(self.tail, dtype=np.int64))
        self._fd, self._pid = None, None

    def __len__(self) -> int:
        return len(self.index)

    def lengths(self) -> np.ndarray:
        return self.index[:, 1].copy()

    @property
    def nbytes(self) -> int:
        return int(self.index[:, 1].sum()) * self.row_bytes

    def _file(self) -> int:
        if self._pid != os.getpid():     # a forked DataLoader worker opens its own descriptor
            self._fd, self._pid = os.open(self.folder / DATA, os.O_RDONLY), os.getpid()
        return self._fd

    def read(self, i: int, rows: int | None = None) -> np.ndarray:
        first, count = (int(v) for v in self.index[i])
        count = count if rows is None else min(count, rows)
        raw = np.empty((count, *self.tail), self.dtype)
        if raw.nbytes and os.preadv(self._file(), [memoryview(raw).cast("B")], first * self.row_bytes) != raw.nbytes:
            raise OSError(f"{self.folder / DATA}: item {i} is cut short; delete {self.folder} to rebuild it")
        if self.dtype == np.float32 or (self.dtype == np.float16 and self.scale == 1):   # float16: the reader's to widen
            return raw
        return raw.astype(np.float32) * np.float32(self.scale)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.read(i)

    def __getstate__(self):              # DataLoader workers (spawn) reopen the file
        return {**self.__dict__, "_fd": None, "_pid": None}

    def __del__(self):
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)


def fingerprint(paths, **settings) -> str:
    """A key for what a store is built from: each file's path, size and modification time, and
    the settings. stat() only, nothing read: a 150,000-file corpus hashes in seconds."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{os.path.abspath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def write_items(folder: Path, items, dtype, tail: tuple = (), scale: float = 1.0, meta: dict | None = None,
                order=None) -> None:
    """Write the arrays of `items` (an iterable, consumed once) into a new store in `folder`:
    item i of the store is the i-th array, or with `order` (a permutation) the array written
    where order says i. For an integer dtype the arrays must be exact multiples of `scale`
    (ValueError otherwise)."""
    folder.mkdir(parents=True)
    dtype = np.dtype(dtype)
    index = []
    first = 0
    with open(folder / DATA, "wb") as out:
        for array in items:
            if tuple(array.shape[1:]) != tuple(tail):
                raise ValueError(f"an item of shape {array.shape} in a store of [rows, {', '.join(map(str, tail))}]")
            if dtype.kind == "i":
                stored = np.rint(array / np.float32(scale)).astype(dtype)
                if not np.array_equal(stored.astype(np.float32) * np.float32(scale), array):
                    raise ValueError("not exactly representable")
            else:
                stored = np.ascontiguousarray(array, dtype)
            out.write(memoryview(stored).cast("B"))
            index.append((first, len(array)))
            first += len(array)
    index = np.array(index, dtype=np.int64).reshape(-1, 2)
    if order is not None:
        placed = np.empty_like(index)
        placed[np.asarray(order)] = index
        index = placed
    np.save(folder / INDEX, index)
    (folder / META).write_text(json.dumps({"dtype": dtype.name, "tail": list(tail), "scale": scale, **(meta or {})}))


def built(folder, build, what: str, build_here: bool = True, wait_log_seconds: float = 60.0) -> Store:
    """The store in `folder`, built by `build(tmp_folder)` if it is not there yet: one process
    builds (a lock beside the folder), the others wait for it and open what it built. With
    build_here False (torchrun's other processes on a machine) this process only waits."""
    folder = Path(folder)
    lock_path = folder.with_name(folder.name + ".lock")
    waited = time.monotonic()
    while not build_here and not (folder / META).is_file():
        time.sleep(0.2)
        if time.monotonic() - waited > wait_log_seconds:
            log.info("waiting for the first process on this machine to build the %s cache %s", what, folder)
            waited = time.monotonic()
    while not (folder / META).is_file():
        try:
            lock = RunLock(lock_path, f"the {what} cache {folder}", wait=wait_log_seconds).acquire()
        except LockedError as err:
            log.info("waiting: %s", err)
            continue
        try:
            if (folder / META).is_file():
                break
            tmp = folder.with_name(f".{folder.name}.partial.{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            start = time.perf_counter()
            try:
                build(tmp)
                shutil.rmtree(folder, ignore_errors=True)   # a folder without its meta.json is not a store
                os.replace(tmp, folder)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            store = Store(folder)
            log.info("built the %s cache %s: %d items, %.2f GB, in %.1f s", what, folder, len(store),
                     store.nbytes / 1e9, time.perf_counter() - start)
        finally:
            lock.release()
    return Store(folder)
