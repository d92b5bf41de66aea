"""Crash-safe installation into a model repository: staging, a journal, atomic moves, recovery.

An export stages every file in a work folder *beside* the repository root
(``.<root>.hf2triton-export``: same filesystem, so moves are renames, and outside the
root, where Triton never looks). It then writes a journal listing each change — put a
staged folder or file at a target path, or take a target away — with the inode numbers
of the staged and the previous item, and applies the changes in order: steps first, the
ensemble last. A replacement is one ``renameat2(RENAME_EXCHANGE)`` where the kernel has it
(a polling server never sees the model missing); the previous item ends up in the work
folder. A commit record ends the export, and the work folder is removed.

Killed (SIGKILL, power cut of the process) at any point, the repository holds the
previous versions plus, at most, some already-installed parts of the new export; nothing
is lost, because every replaced item waits in the work folder until the commit. The next
export, and ``hf2triton serve``'s repository check, call :func:`recover_repository`,
which rolls an unfinished installation back (each target gets the item with its old inode)
or finishes a committed one's cleanup. Exports into one repository take an exclusive
``flock`` on the root, so recovery never undoes an export that is still running.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import logging
import os
import shutil
import signal
import stat
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from hf2triton.errors import RepositoryError

log = logging.getLogger(__name__)

FILE_MODE, DIR_MODE = 0o644, 0o755
JOURNAL = "journal.json"
STAGED, REMOVED, DISCARDED = "staged", "removed", "discarded"
# Tests only: SIGKILL the export at a named point (see ``crash_point``).
KILL_POINT_ENV = "HF2TRITON_TEST_KILL_AT"
KILL_POINTS = ("staging", "journal", "half", "installed", "committed")


def crash_point(point: str) -> None:
    """Die here, as a killed process would, when the test environment variable names ``point``."""
    if os.environ.get(KILL_POINT_ENV) == point:
        log.warning("%s=%s: killing the export here", KILL_POINT_ENV, point)
        os.kill(os.getpid(), signal.SIGKILL)


def work_dir(root: Path) -> Path:
    return root.parent / f".{root.name}.hf2triton-export"


def prepare_root(root: Path) -> Path:
    """The repository root, created 0755 whatever the umask; group/world write bits are removed
    from an existing one (anyone could drop a model into a polled repository)."""
    root = Path(root).resolve()
    if root.exists() and not root.is_dir():
        raise RepositoryError(f"output {root} exists and is not a directory")
    if not root.exists():
        root.mkdir(parents=True)
        root.chmod(DIR_MODE)
    mode = stat.S_IMODE(root.stat().st_mode)
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        log.warning("%s was group/world-writable (%o): made %o", root, mode, mode & ~0o022)
        root.chmod(mode & ~0o022)
    return root


@contextlib.contextmanager
def repository_lock(root: Path, wait: bool = True) -> Iterator[bool]:
    """Exclusive lock on the repository root folder; yields False when ``wait`` is off and it is taken."""
    descriptor = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(descriptor)  # releases the lock


def restrict_permissions(folder: Path) -> None:
    """Folders 0755, files 0644 below ``folder`` (whatever the umask): only the owner writes."""
    folder.chmod(DIR_MODE)
    for path in folder.rglob("*"):
        path.chmod(DIR_MODE if path.is_dir() else FILE_MODE)


def start_work(root: Path) -> Path:
    """An empty work folder beside ``root`` (after recovery), on the same filesystem."""
    work = work_dir(root)
    work.mkdir(mode=0o700)
    work.chmod(0o700)  # whatever the umask: staged models are not for others to change
    (work / STAGED).mkdir()
    if work.stat().st_dev != root.stat().st_dev:
        shutil.rmtree(work)
        raise RepositoryError(
            f"{root} is a mount point: the export stages beside it, in {root.parent}, which is on another "
            "filesystem, so it cannot move models in atomically; export into a folder inside the mount"
        )
    return work


@dataclass(frozen=True)
class Change:
    """Put the staged item (relative to the work folder) at ``target`` (relative to the root),
    or, with ``staged`` None, take ``target`` away."""

    target: str
    staged: str | None


@dataclass(frozen=True)
class JournalEntry:
    target: str
    staged: str | None
    aside: str  # where the previous item waits (relative to the work folder) once the change is made
    new_inode: int | None
    old_inode: int | None  # None: nothing was at the target


def _inode(path: Path) -> int | None:
    try:
        return path.lstat().st_ino
    except FileNotFoundError:
        return None


def _write_journal(work: Path, state: str, entries: list[JournalEntry]) -> None:
    """Atomically (write, fsync, rename): a reader sees the old journal or the new one."""
    temporary = work / f"{JOURNAL}.tmp"
    with temporary.open("w") as handle:
        json.dump({"state": state, "entries": [asdict(e) for e in entries]}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, work / JOURNAL)


def _read_journal(work: Path) -> tuple[str, list[JournalEntry]] | None:
    try:
        journal = json.loads((work / JOURNAL).read_text())
        return journal["state"], [JournalEntry(**e) for e in journal["entries"]]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise RepositoryError(f"the export journal {work / JOURNAL} is unreadable ({error}); "
                              f"restore {work.parent} by hand from {work}") from None


_RENAME_EXCHANGE, _AT_FDCWD = 2, -100


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths atomically (Linux renameat2); False where the kernel or filesystem cannot."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(second))


def _apply(root: Path, work: Path, entry: JournalEntry) -> None:
    target = root / entry.target
    if entry.staged is None:
        if entry.old_inode is not None:
            os.rename(target, work / entry.aside)
    elif entry.old_inode is None:
        os.rename(work / entry.staged, target)
    elif not _exchange(work / entry.staged, target):  # old item now at the staged path (= aside)
        os.rename(target, work / REMOVED / entry.target.replace("/", "%"))
        os.rename(work / entry.staged, target)


def install(root: Path, work: Path, changes: list[Change]) -> None:
    """Make ``changes`` in order, journaled so that :func:`recover_repository` can undo them."""
    (work / REMOVED).mkdir(exist_ok=True)
    entries = [
        JournalEntry(
            target=c.target,
            staged=c.staged,
            aside=c.staged if c.staged is not None else f"{REMOVED}/{c.target.replace('/', '%')}",
            new_inode=_inode(work / c.staged) if c.staged is not None else None,
            old_inode=_inode(root / c.target),
        )
        for c in changes
    ]
    _write_journal(work, "installing", entries)
    crash_point("journal")
    for index, entry in enumerate(entries):
        _apply(root, work, entry)
        if index == len(entries) // 2:
            crash_point("half")
    crash_point("installed")
    _write_journal(work, "committed", entries)
    crash_point("committed")
    _discard(work)


def _rollback(root: Path, work: Path, entries: list[JournalEntry]) -> None:
    """Give every target its previous item back (by inode), newest change first; repeatable."""
    (work / DISCARDED).mkdir(exist_ok=True)
    for index, entry in reversed(list(enumerate(entries))):
        target = root / entry.target
        if entry.new_inode is not None and _inode(target) == entry.new_inode:
            os.rename(target, work / DISCARDED / str(index))
        if entry.old_inode is None or _inode(target) is not None:
            continue
        places = [work / entry.aside, work / REMOVED / entry.target.replace("/", "%")]
        for place in places:
            if _inode(place) == entry.old_inode:
                os.rename(place, target)
                break
        else:
            log.error("the previous %s was not found in %s", target, work)


def _discard(work: Path) -> None:
    """Remove the work folder: journal first, so a kill midway leaves nothing to roll back."""
    with contextlib.suppress(FileNotFoundError):
        (work / JOURNAL).unlink()
    shutil.rmtree(work, ignore_errors=True)


def _recover_legacy(root: Path) -> list[str]:
    """Exports before the journal renamed a replaced model to ``.NAME.old`` inside the root."""
    done = []
    for old in sorted(root.glob(".*.old")):
        model = root / old.name[1:-4]
        if not old.name[1:-4] or not (old / "config.pbtxt").is_file():  # only model folders moved aside
            continue
        if model.exists():
            shutil.rmtree(old)
            done.append(f"removed the leftover {old.name}")
        else:
            old.rename(model)
            done.append(f"restored {model.name} from {old.name}")
    return done


def recover_locked(root: Path) -> list[str]:
    """Recovery, for a caller holding :func:`repository_lock`; returns what was done."""
    done = _recover_legacy(root)
    work = work_dir(root)
    if not work.exists():
        return done
    journal = _read_journal(work)
    if journal is None:
        done.append("removed the staging of an export that was stopped before installing")
    elif journal[0] == "installing":
        _rollback(root, work, journal[1])
        done.append(f"rolled back an export that was stopped while installing ({len(journal[1])} changes)")
    else:
        done.append("finished the cleanup of an export that was stopped after installing")
    _discard(work)
    for line in done:
        log.warning("%s: %s", root, line)
    return done


def recover_repository(root: Path) -> list[str]:
    """Undo or finish what an interrupted export left in ``root``; nothing while an export runs.

    Call before serving a repository (``hf2triton serve``); every export calls it first.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        return []
    with repository_lock(root, wait=False) as locked:
        if not locked:
            log.info("%s: an export is running; not recovering", root)
            return []
        return recover_locked(root)
