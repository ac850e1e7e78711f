"""The convention every `xmodal-*` command follows (docs/commands.md): every option has help text, a command that
writes takes --out (and --overwrite to replace), and it is quiet by default: no tensorboardX notice, no fairseq INFO
line and no weight_norm FutureWarning, neither on --help nor on a run; --verbose shows fairseq's logging again."""
import argparse
import importlib
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO

# `name=module:function` in setup.py's console_scripts, or `name = "module:function"` in pyproject.toml
_ENTRY = re.compile(r"""["']?(xmodal-[\w-]+)["']?\s*=\s*["']?([\w.]+):(\w+)""")
# commands that write files; the two exceptions, and why, are in docs/commands.md
WRITERS_WITHOUT_OUT = {"xmodal-sweep-table", "xmodal-slurm-array"}


def entry_points():
    found = {}
    for name in ("pyproject.toml", "setup.py"):
        path = os.path.join(REPO, name)
        if os.path.exists(path):
            with open(path) as f:
                for m in _ENTRY.finditer(f.read()):
                    found.setdefault(m.group(1), (m.group(2), m.group(3)))
    assert len(found) >= 11, found
    return found


class _Parsed(Exception):
    def __init__(self, parser):
        self.parser = parser


def parser_of(module: str, function: str) -> argparse.ArgumentParser:
    """The parser a command's main() builds: parse_args is stopped before it reads anything."""
    main = getattr(importlib.import_module(module), function)

    def stop(self, *args, **kwargs):
        raise _Parsed(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(argparse.ArgumentParser, "parse_args", stop)
        with pytest.raises(_Parsed) as caught:
            main([])
    return caught.value.parser


@pytest.mark.parametrize("command", sorted(entry_points()))
def test_every_option_has_help_and_writers_take_out(command):
    parser = parser_of(*entry_points()[command])
    missing = [a.option_strings or [a.dest] for a in parser._actions
               if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]
    assert not missing, f"{command}: options without help text: {missing}"
    options = {s for a in parser._actions for s in a.option_strings}
    assert "--verbose" in options, command
    assert "--out-dir" not in options, command  # one spelling: --out
    if "--overwrite" in options and command not in WRITERS_WITHOUT_OUT:
        assert "--out" in options, command


def test_quiet_help_and_run_verbose_on_request(tmp_path):
    """Every command's --help in one fresh interpreter (so its first fairseq import happens here), then a command
    that builds a model (weight_norm) quietly and with --verbose."""
    calls = "\n".join(f"run({name!r}, {mod!r}, {fn!r})" for name, (mod, fn) in sorted(entry_points().items()))
    script = f"""
import contextlib, importlib, io, sys
def run(name, mod, fn):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            getattr(importlib.import_module(mod), fn)(["--help"])
        except SystemExit as e:
            assert e.code == 0, (name, e.code)
    assert out.getvalue().startswith("usage:"), (name, out.getvalue()[:200])
{calls}
"""
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=str(tmp_path),
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr == "", proc.stderr[-3000:]  # no tensorboardX notice, no INFO line, no warning

    make = [sys.executable, "-m", "fairseq_xmodal.cli.make_official", "--size", "tiny"]
    quiet = subprocess.run(make + ["--out", str(tmp_path / "quiet")], capture_output=True, text=True, env=env,
                           timeout=600)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr[-3000:]
    assert quiet.stdout.startswith("wrote ")
    verbose = subprocess.run(make + ["--out", str(tmp_path / "verbose"), "--verbose"], capture_output=True,
                             text=True, env=env, timeout=600)
    assert verbose.returncode == 0 and "weight_norm" in verbose.stderr, verbose.stderr[-3000:]
