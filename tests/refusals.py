"""How a refusal must look from the outside: exit status 2, one line on stderr naming the file, no traceback."""
import re

# fairseq_xmodal.progress writes "<step>: 34/336 utt (10%), 0 s, ..." to stderr when it is not a terminal
PROGRESS_LINE = re.compile(r"^[\w .-]+: \d+(/\d+)? \S+( \(\d+%\))?, \d+ s")


def refusal_lines(stderr: str):
    """stderr without the library chatter (logging, warnings, progress lines) that is not the command's own message."""
    return [ln for ln in stderr.splitlines() if ln.strip() and "Warning" not in ln and "warn(" not in ln
            and not ln.startswith(("INFO:", "WARNING:", "  ")) and not PROGRESS_LINE.match(ln)]


def assert_refused(proc, path, *words):
    """Exit 2, exactly one stderr line, naming `path` (and `words`), no traceback; returns the line."""
    lines = refusal_lines(proc.stderr)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1, lines
    assert str(path) in lines[0], lines[0]
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def assert_training_refused(proc, *words):
    """fairseq-hydra-train stopped at start by fairseq_xmodal: exit 2, no traceback, exactly one `fairseq-xmodal`
    line naming `words` (Hydra's and fairseq's own chatter around it is not ours to count); returns the line."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("fairseq-xmodal")]
    assert len(lines) == 1, lines
    for w in words:
        assert str(w) in lines[0], lines[0]
    return lines[0]
