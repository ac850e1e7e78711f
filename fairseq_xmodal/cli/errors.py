"""One rule for every `xmodal-*` command: a refusal or a fault of the environment is one line on stderr naming the
file and the fix, exit status 2, no traceback. Programming errors still show their traceback (they are bugs)."""
import errno
import functools
import os
import sys
from typing import Callable, Iterable, Optional

import soundfile as sf

from .. import console

OUTPUT_FIX = "free space there or choose another output location"


def describe_os_error(e: OSError) -> str:
    """An OSError as one line that names the path and says what to do."""
    path = e.filename or ""
    where = f" {path}" if path else ""
    if e.errno == errno.ENOSPC:
        return f"no space left on the device holding{where}: {OUTPUT_FIX}"
    if e.errno == errno.EDQUOT:
        return f"disk quota exceeded writing{where}: {OUTPUT_FIX}"
    if e.errno == errno.EROFS:
        return f"{path or 'the output location'} is on a read-only file system: choose a writable output location"
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied:{where}: make it writable/readable or choose another location"
    if e.errno == errno.ENOENT:
        return f"{path or 'a file'} not found: check the path"
    # makedirs of an output's folder where a file of that name is (EEXIST), or a path through a file (ENOTDIR)
    if e.errno == errno.EEXIST and path and os.path.isfile(path):
        return f"{path} is a file, not a folder: choose another output location"
    if e.errno == errno.ENOTDIR:
        return f"{path or 'a path'} goes through a file, not a folder: choose another output location"
    return f"{e.strerror or e}{':' + where if where else ''}"


def one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and not isinstance(e, sf.SoundFileError) and e.errno is not None:
        return describe_os_error(e)
    text = str(e).strip() or type(e).__name__
    return text


EXPECTED = (ValueError, OSError, sf.SoundFileError)


def console_main(prog: str) -> Callable:
    """Decorator for a `main(argv) -> int`: quiet unless --verbose (console.py; the command's parser declares
    --verbose with console.add_verbose), and expected errors become `prog: error: <message>` and exit status 2."""
    def wrap(fn):
        @functools.wraps(fn)
        def main(argv=None):
            console.configure(console.wants_verbose(sys.argv[1:] if argv is None else argv))
            try:
                return fn(argv)
            except EXPECTED as e:
                print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
                return 2
        return main
    return wrap


def refuse_existing(out: str, overwrite: bool, inputs: Iterable[Optional[str]] = (), option: str = "--out"):
    """The output rule of every command that writes: never replace an input; replace an existing output only with
    --overwrite."""
    real = os.path.realpath(out)
    for path in inputs:
        if path and os.path.exists(path) and os.path.realpath(path) == real:
            raise ValueError(f"{option} {out} is an input of this command; it is never overwritten: choose another "
                             f"{option}")
    if os.path.lexists(out) and not overwrite:
        raise ValueError(f"{out} exists; choose another {option} or pass --overwrite to replace it")
