"""The audio pass under faults: how many workers, workers that die with the parent, clean stop on SIGTERM/SIGINT,
and temp folders left by a run that could not clean up (SIGKILL, power loss).

- `available_cpus`: the CPUs this process may run on (a Slurm allocation or taskset), not the machine's count.
- `worker_init`: pool initializer; asks the kernel to SIGKILL the worker when its parent dies (prctl
  PR_SET_PDEATHSIG, Linux), so even a SIGKILL'd `xmodal-prepare-slue` leaves no workers behind, and makes workers
  ignore SIGINT (Ctrl-C reaches the whole process group; the parent decides).
- `stop_on_signals`: turns SIGTERM/SIGINT in the parent into `Interrupted`, so the `finally`/`except` blocks run
  (pool terminated, temp folder removed) and the command exits non-zero with one line.
- `stale_temp_folders`: `<out>.tmp-<pid>` / `<out>.old-<pid>` folders whose process is gone.
"""
import contextlib
import ctypes
import glob
import os
import signal
from typing import List

PR_SET_PDEATHSIG = 1


class Interrupted(BaseException):
    """SIGTERM/SIGINT arrived; a BaseException so that no `except Exception` swallows it."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


def available_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def worker_init() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # no prctl (macOS): workers still end with the pool on a clean stop
        pass
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


@contextlib.contextmanager
def stop_on_signals(signals=(signal.SIGTERM, signal.SIGINT)):
    def handler(signum, frame):
        raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_temp_folders(out: str) -> List[str]:
    """Leftovers of earlier runs for output `out` whose process no longer exists."""
    stale = []
    for path in sorted(glob.glob(glob.escape(out) + ".tmp-*") + glob.glob(glob.escape(out) + ".old-*")):
        suffix = path.rsplit("-", 1)[-1]
        if not suffix.isdigit() or not _pid_alive(int(suffix)):
            stale.append(path)
    return stale
