"""Writing files so that a reader never sees half of one, and file digests: the one place for both.

Every write goes to a temp file in the target's own directory (so the final os.replace is a rename within one file
system, atomic on POSIX), is fsync'ed, and is then renamed over the target; on any error the temp file is removed and
the previous target (if any) is untouched. `write_together` extends that to several files that must never disagree
(predictions.tsv + metrics.json): all are replaced, or none is.
"""
import errno
import hashlib
import json
import os
import shutil
import tempfile
from typing import Any, Callable, Dict, List


def mkstemp_beside(path: str):
    """A temp file in the target's directory (so os.replace is atomic) with normal umask permissions -> (fd, path)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return fd, tmp


def _fsync(path: str) -> None:
    """Flush a closed file's data to disk before it is renamed into place (a crash then leaves old or new, whole)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_with(write: Callable[[str], None], path: str) -> None:
    """write(tmp path) fills a temp file beside `path`, which is then fsync'ed and renamed into place; no temp file
    survives a failure, and an OSError names `path`, not the temp file."""
    fd, tmp = mkstemp_beside(path)
    os.close(fd)
    try:
        try:
            write(tmp)
        except OSError as e:
            raise OSError(e.errno, e.strerror, path) from None
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _write_text_to(text: str) -> Callable[[str], None]:
    def write(tmp: str):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    return write


def atomic_write_text(text: str, path: str) -> None:
    atomic_write_with(_write_text_to(text), path)


def json_text(obj: Any) -> str:
    """The one JSON layout of every file this package writes."""
    return json.dumps(obj, indent=2) + "\n"


def atomic_write_json(obj: Any, path: str) -> None:
    atomic_write_text(json_text(obj), path)


def atomic_copy(src: str, path: str) -> None:
    atomic_write_with(lambda tmp: shutil.copyfile(src, tmp), path)


def _no_space(directory: str) -> bool:
    try:
        st = os.statvfs(directory)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < (1 << 20)


def atomic_torch_save(obj, path: str) -> None:
    """torch.save, atomically; a full disk or an I/O error (which torch's zip writer reports as RuntimeError) is an
    OSError naming `path`."""
    import torch

    def write(tmp: str):
        try:
            torch.save(obj, tmp)
        except RuntimeError as e:  # torch's zip writer reports ENOSPC/EIO as RuntimeError (iostream/write errors)
            if _no_space(os.path.dirname(os.path.abspath(path))):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path) from None
            if not any(w in str(e) for w in ("write", "iostream", "inline_container")):
                raise
            raise OSError(errno.EIO, f"{os.strerror(errno.EIO)} ({str(e).splitlines()[0][:100]})", path) from None

    atomic_write_with(write, path)


def write_together(writers: Dict[str, Callable[[str], None]]) -> None:
    """{target path: fn(tmp path) that writes it}: every target is replaced, or (on any error, e.g. a full disk)
    none is and the previous files are back; no temp or backup file is left behind either way."""
    temps: Dict[str, str] = {}
    backups: Dict[str, str] = {}
    placed: List[str] = []
    try:
        for target, write in writers.items():
            fd, tmp = mkstemp_beside(target)
            os.close(fd)
            temps[target] = tmp
            try:
                write(tmp)
            except OSError as e:  # name the file the user asked for, not our temp file
                raise OSError(e.errno, e.strerror, target) from None
            _fsync(tmp)
        for target in writers:
            if os.path.exists(target):
                backups[target] = f"{temps[target]}.old"
                os.replace(target, backups[target])
        for target in writers:
            os.replace(temps[target], target)
            placed.append(target)
    except BaseException:
        for target in placed:
            os.remove(target)
        for target, old in backups.items():
            os.replace(old, target)
        backups.clear()
        raise
    finally:
        for path in list(temps.values()) + list(backups.values()):
            if os.path.exists(path):
                os.remove(path)


def sha256(path: str) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
