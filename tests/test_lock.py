"""Taking over a dead holder's lock is atomic: of two processes that both judge it dead, exactly
one holds it afterwards; the other is refused, naming the winner."""
import json
import multiprocessing
import os
import time

import pytest

from utils import lock
from utils.lock import LockedError, RunLock


def write_dead_holder(path) -> None:
    """A record of this process's pid but another start time: a pid since reused, so dead."""
    path.write_text(json.dumps({**lock.holder_record(), "started": "1"}))


def test_a_rival_that_takes_over_between_our_check_and_our_takeover_keeps_the_lock(tmp_path, monkeypatch):
    """The second taker acts in the window: after we judged the lock dead, before we take it."""
    path = tmp_path / ".fold1.lock"
    write_dead_holder(path)
    judge, rivals = lock.is_dead, []

    def judged_then_rival_takes_it(holder, where):
        dead = judge(holder, where)
        if dead and not rivals:
            rivals.append(RunLock(path, "fold 1"))
            rivals[0].acquire()           # its own checks see a non-empty list: no third taker
        return dead

    monkeypatch.setattr(lock, "is_dead", judged_then_rival_takes_it)
    try:
        with pytest.raises(LockedError, match=f"fold 1 is in use by process {os.getpid()} on"):
            RunLock(path, "fold 1").acquire()
        assert len(rivals) == 1 and path.is_file()  # the rival's file, not renamed aside
        assert json.loads(path.read_text())["started"] == lock.holder_record()["started"]
    finally:
        for rival in rivals:
            rival.release()
    assert not path.exists()


def _take(path, barrier, results) -> None:
    """One contender: wait for the others, try once, keep what it got until all have tried."""
    barrier.wait()
    try:
        held = RunLock(path, "fold 1").acquire()
    except LockedError:
        held = None
    results.put(held is not None)
    barrier.wait()
    if held is not None:
        held.release()


def test_of_processes_racing_for_a_dead_lock_exactly_one_wins(tmp_path, monkeypatch):
    """Four forked processes, five rounds, each judging the lock dead then pausing 20 ms (the
    window a slow file system leaves) before taking it over."""
    judge = lock.is_dead

    def slow_judge(holder, where):
        dead = judge(holder, where)
        time.sleep(0.02 if dead else 0)
        return dead

    monkeypatch.setattr(lock, "is_dead", slow_judge)
    context = multiprocessing.get_context("fork")
    for round_ in range(5):
        path = tmp_path / f".fold{round_}.lock"
        write_dead_holder(path)
        barrier, results = context.Barrier(4), context.Queue()
        takers = [context.Process(target=_take, args=(path, barrier, results)) for _ in range(4)]
        for taker in takers:
            taker.start()
        wins = [results.get(timeout=30) for _ in takers]
        for taker in takers:
            taker.join(timeout=30)
            assert taker.exitcode == 0
        assert sum(wins) == 1, f"round {round_}: {sum(wins)} processes hold the lock"
        assert not path.exists()


def test_a_lock_released_and_taken_anew_while_we_wait_for_its_flock_is_left_to_its_new_holder(tmp_path, monkeypatch):
    """We opened the dead holder's file; before our flock, it is removed and a live holder
    creates the path anew: we write nothing into the removed file and are refused."""
    path = tmp_path / ".fold1.lock"
    write_dead_holder(path)
    flock, swapped = lock.fcntl.flock, []

    def swapped_before_our_flock(handle, operation):
        if not swapped:
            swapped.append(path.read_text())
            path.unlink()
            path.write_text(json.dumps(lock.holder_record()))   # a live holder: this process
        return flock(handle, operation)

    monkeypatch.setattr(lock.fcntl, "flock", swapped_before_our_flock)
    with pytest.raises(LockedError, match=f"in use by process {os.getpid()} on"):
        RunLock(path, "fold 1").acquire()
    assert json.loads(path.read_text())["started"] == lock.holder_record()["started"] and swapped
