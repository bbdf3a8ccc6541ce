"""One process at a time in a run folder: lock files that name their holder, are released on
exit, and are taken over from a dead holder (crash or SIGKILL).

A lock is a file created with O_CREAT | O_EXCL, which is atomic on local and network file
systems (NFS included), holding its holder's host, pid, process start time and command. A
holder refreshes the file's modification time every HEARTBEAT seconds. A lock is dead when
its holder ran on this host and that process is gone (pid absent, or reused by a process
that started later), or, for a holder on another host (torchrun across nodes, a shared
folder), when its heartbeat is older than STALE seconds. A dead lock is taken over in place:
under an flock on that very file (released by the kernel if its taker dies; NFS carries it
as a byte-range lock), the taker checks that the path still names it and that its record is
still dead, then writes its own. Of several processes taking it over, one wins; the others
find the winner's live record."""
import fcntl
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

from models.errors import MMERError

HEARTBEAT = 30.0
STALE = 300.0


class LockedError(MMERError, RuntimeError):
    """Another live process holds the lock; the message names it."""


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holder_record() -> dict:
    return {"host": socket.gethostname(), "boot": _boot_id(), "pid": os.getpid(),
            "started": _start_time(os.getpid()), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv)[:300]}


def describe(holder: dict) -> str:
    return (f"process {holder.get('pid')} on {holder.get('host')} since {holder.get('since')} "
            f"({holder.get('command', '?')})")


def is_dead(holder: dict, path: Path) -> bool:
    """A holder on this host (same boot) is dead when its process is; elsewhere, when its
    heartbeat has stopped for STALE seconds."""
    same_machine = holder.get("host") == socket.gethostname() and holder.get("boot") == _boot_id()
    if same_machine:
        pid = int(holder.get("pid", -1))
        return not _alive(pid) or (holder.get("started") is not None and _start_time(pid) != holder["started"])
    try:
        return time.time() - path.stat().st_mtime > STALE
    except FileNotFoundError:
        return True


def read_holder(path: Path) -> dict | None:
    try:
        return _parse(path.read_text())
    except FileNotFoundError:
        return None
    except OSError:
        return {}


def _parse(text: str) -> dict:
    """A holder record; {} for one being written or cut short by a crash (judged by its age)."""
    try:
        holder = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return holder if isinstance(holder, dict) else {}


class RunLock:
    """`with RunLock(path, what):` holds the lock file `path` or raises LockedError naming the holder."""

    def __init__(self, path, what: str, wait: float = 0.0):
        """wait: seconds to wait for a live holder to release it (short critical sections)."""
        self.path, self.what, self.wait = Path(path), what, wait
        self._stop = threading.Event()
        self._beat = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.wait
        for _ in range(100_000):
            if self._create() or self._take_over_if_dead():
                self._beat = threading.Thread(target=self._heartbeat, daemon=True, name=f"lock {self.path.name}")
                self._beat.start()
                return self
            holder = read_holder(self.path)
            if holder is None or self._dead(holder):
                continue  # released meanwhile, or a dead one a rival is taking over
            if time.monotonic() >= deadline:
                raise LockedError(f"{self.what} is in use by {describe(holder) if holder else 'another process'} "
                                  f"(lock {self.path}); wait for it to finish, or stop it first")
            time.sleep(0.05)
        raise LockedError(f"{self.what}: could not take the lock {self.path}; retry")

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as handle:
            json.dump(holder_record(), handle)
        return True

    def _dead(self, holder: dict) -> bool:
        """An unreadable record (being written, or cut short by a crash) is judged by its age."""
        return is_dead(holder, self.path) if holder else time.time() - self._mtime() > STALE

    def _mtime(self) -> float:
        try:
            return self.path.stat().st_mtime
        except FileNotFoundError:
            return 0.0

    def _take_over_if_dead(self) -> bool:
        """Write our record over a dead holder's, judged under an flock on its file: a rival that
        took it first has left its live record there, and the judgement says so."""
        holder = read_holder(self.path)
        if holder is None or not self._dead(holder):
            return False
        try:
            handle = open(self.path, "r+")
        except FileNotFoundError:
            return False
        except PermissionError as err:
            raise LockedError(f"{self.what}: the lock {self.path} of a dead holder "
                              f"({describe(holder) if holder else 'unreadable'}) cannot be taken over "
                              f"({err.strerror}); remove that file") from err
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)   # held for a read and a write; released on close
            if not self._names(handle):
                return False
            holder = _parse(handle.read())
            if not self._dead(holder):
                return False
            handle.seek(0)
            handle.truncate()
            json.dump(holder_record(), handle)
        return True

    def _names(self, handle) -> bool:
        """Whether the lock's path still names the open file (not released and created anew)."""
        try:
            here = self.path.stat()
        except FileNotFoundError:
            return False
        mine = os.fstat(handle.fileno())
        return (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino)

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            try:
                os.utime(self.path)
            except FileNotFoundError:
                return

    def release(self) -> None:
        self._stop.set()
        holder = read_holder(self.path)
        if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def live_holders(folder, pattern: str, mine=()) -> list[str]:
    """Descriptions of the live holders of the lock files `folder/pattern`, other than `mine`."""
    held = []
    for path in sorted(Path(folder).glob(pattern)):
        if path in mine:
            continue
        holder = read_holder(path)
        if holder and not is_dead(holder, path):
            held.append(describe(holder))
    return held
