"""SLUE-VoxCeleb tables for `xmodal-prepare-slue`: reading the tsvs, label filtering, row checks, the text vocabulary
inputs, and the bad-row bookkeeping (`Rejects`). Every error names the file, the 1-based line and a fix."""
import os
from collections import Counter
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from fairseq_xmodal.text_vocab import unencodable_chars

BASE_CLASSES = ("Negative", "Neutral", "Positive")
DEFAULT_DROP = ("<mixed>", "Disagreement")
TEXT_COL, LABEL_COL = "normalized_text", "sentiment"
TSV_HEADER_HINT = "id, normalized_text, speaker_id, split, sentiment, start_second, end_second"

class DataPrepError(Exception):
    """Bad input; the message names the file, the 1-based line (header = line 1) and how to fix it."""

    def __init__(self, reason: str, file: Optional[str] = None, line: Optional[int] = None,
                 fix: Optional[str] = None):
        self.reason, self.file, self.line, self.fix = reason, file, line, fix
        where = file or ""
        if line is not None:
            where += f", line {line}"
        msg = f"{where}: {reason}" if where else reason
        if fix:
            msg += f"\n  fix: {fix}"
        super().__init__(msg)


SKIP_BAD_HINT = "or pass --skip-bad to leave bad rows out (they are listed in <out>/rejected.tsv)"


class Rejects:
    """Collects bad rows. With skip_bad they are recorded for rejected.tsv and dropped; without, every bad row of the
    run is collected and `raise_if_any` reports them together (up to `cap`, with the count), so one run shows them
    all."""

    def __init__(self, skip_bad: bool = False, cap: int = 20):
        self.skip_bad, self.cap = skip_bad, cap
        self.rows: List[dict] = []
        self.errors: List[DataPrepError] = []

    def add(self, split: str, file: str, line: int, uid: str, reason: str, fix: str) -> None:
        if not self.skip_bad:
            self.errors.append(DataPrepError(f"id {uid!r}: {reason}" if uid else reason, file, line, fix))
            return
        self.rows.append({"split": split, "file": file, "line": line, "id": uid, "reason": reason})

    def raise_if_any(self) -> None:
        errors, n = self.errors, len(self.errors)
        if not n:
            return
        if n == 1:
            e = errors[0]
            raise DataPrepError(e.reason, e.file, e.line, f"{e.fix}; {SKIP_BAD_HINT}")
        files = sorted({e.file for e in errors if e.file})
        shown = "\n".join(f"  {e.args[0].splitlines()[0]}" for e in errors[: self.cap])
        more = f"\n  ... and {n - self.cap} more" if n > self.cap else ""
        fixes = "; ".join(dict.fromkeys(e.fix for e in errors if e.fix))
        raise DataPrepError(f"{n} bad rows in {', '.join(files)}{' (first ' + str(self.cap) + ' shown)' if n > self.cap else ''}:"
                            f"\n{shown}{more}", fix=f"{fixes}; {SKIP_BAD_HINT}")


# ---------------------------------------------------------------------------------------------------------------
# Reading and row checks
# ---------------------------------------------------------------------------------------------------------------

def read_slue_tsv(path: str, split: str, required: Sequence[str], rejects: Rejects) -> pd.DataFrame:
    """The tsv as a table of strings (only the columns we use) plus `line`, its 1-based line number in the file."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:  # -sig: a UTF-8 byte-order mark is not a column
            text = f.read()
    except UnicodeDecodeError as e:
        raise DataPrepError(f"not UTF-8 text (byte {e.object[e.start:e.start + 1]!r} at offset {e.start})", path,
                            None, "re-save the tsv as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
    except OSError as e:
        raise DataPrepError(f"cannot read the file ({e})", path, None,
                            "point --slue-dir at the unpacked slue-voxceleb folder (UTF-8 tsvs)") from e
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in lines]
    if not lines:
        raise DataPrepError("the file is empty", path, 1, f"expected a header line with columns {TSV_HEADER_HINT}")
    header = lines[0].split("\t")
    missing = [c for c in required if c not in header]
    if missing:
        raise DataPrepError(f"missing column(s) {', '.join(missing)}; the header has {', '.join(header)}", path, 1,
                            f"use the released tsv (tab-separated, columns {TSV_HEADER_HINT})")
    wanted = [c for c in ("id", TEXT_COL, LABEL_COL, "start_second", "end_second") if c in header]
    pos = {c: header.index(c) for c in wanted}
    rows = []
    for n, ln in enumerate(lines[1:], start=2):
        if not ln.strip():
            continue  # a blank line carries no utterance; the line numbers stay those of the file
        fields = ln.split("\t")
        if len(fields) != len(header):
            uid = fields[pos["id"]] if pos["id"] < len(fields) else ""
            rejects.add(split, path, n, uid, f"{len(fields)} tab-separated fields, the header has {len(header)}",
                        "one utterance per line, fields separated by single tabs, no tabs inside a field")
            continue
        row = {c: fields[i] for c, i in pos.items()}
        row["line"] = n
        rows.append(row)
    return pd.DataFrame(rows, columns=wanted + ["line"]).astype({"line": "int64"})


def label_counts(df: pd.DataFrame) -> Dict[str, int]:
    """{label: rows}, sorted by label; empty for a split without labels."""
    if LABEL_COL not in df.columns:
        return {}
    return {k: int(v) for k, v in sorted(Counter(df[LABEL_COL]).items())}


def resolve_labels(keep: Iterable[str] = (), drop: Iterable[str] = ()) -> Tuple[List[str], List[str]]:
    """(classes, dropped labels) after --keep-label / --drop-label; classes sorted as slue-toolkit sorts them."""
    keep, drop = set(keep), set(drop)
    both = keep & drop
    if both:
        raise DataPrepError(f"label(s) {sorted(both)} given to both --keep-label and --drop-label",
                            fix="name each label in one of the two options only")
    classes = sorted((set(BASE_CLASSES) | keep) - drop)
    if not classes:
        raise DataPrepError("every class is dropped", fix="keep at least one label")
    return classes, sorted((set(DEFAULT_DROP) | drop) - keep)


def filter_labels(df: pd.DataFrame, classes: Sequence[str] = BASE_CLASSES, drop: Sequence[str] = DEFAULT_DROP, *,
                  split: str = "", file: str = "<table>",
                  rejects: Optional[Rejects] = None) -> Tuple[pd.DataFrame, Dict[str, int]]:
    """Rows whose label is a class, and {dropped label: rows}. Labels are compared as exact strings.

    A label that is neither a class nor dropped is a bad row: mapping it silently (as the prior system's `<unk>`)
    would train on a class nobody asked for.
    """
    own = rejects is None
    rejects = rejects or Rejects()
    cls, drp = set(classes), set(drop)
    by_case = {c.casefold(): c for c in classes}
    keep = np.zeros(len(df), dtype=bool)
    dropped: Counter = Counter()
    for i, (label, uid, line) in enumerate(zip(df[LABEL_COL], df["id"], df["line"] if "line" in df else
                                               range(2, len(df) + 2))):
        if label in cls:
            keep[i] = True
        elif label in drp:
            dropped[label] += 1
        else:
            near = by_case.get(str(label).strip().casefold())
            hint = f": did you mean {near!r}?" if near else ""
            rejects.add(split, file, int(line), uid, f"unknown label {label!r} (classes: {', '.join(classes)}; "
                        f"dropped: {', '.join(drop) or 'none'}){hint}",
                        (f"write it as {near!r} (labels are case-sensitive), " if near else "")
                        + f"--keep-label {label!r} to keep it as a class of its own, or --drop-label {label!r}")
    if own:
        rejects.raise_if_any()
    return df[keep].reset_index(drop=True), dict(sorted(dropped.items()))


def check_rows(df: pd.DataFrame, split: str, file: str, rejects: Rejects) -> pd.DataFrame:
    """Rows with a usable id, a non-empty transcript (where the split has text) and 0 <= start < end.

    Adds float columns `start`/`end`; drops (with --skip-bad) or raises on everything else.
    """
    good, starts, ends = [], [], []
    first_line: Dict[str, int] = {}
    has_text = TEXT_COL in df.columns
    for i, row in enumerate(df.itertuples(index=False)):
        r = row._asdict()
        uid, line = r["id"], int(r["line"])
        if not uid or uid != uid.strip() or "/" in uid or "\\" in uid or uid in (".", ".."):
            rejects.add(split, file, line, uid, "empty or invalid id (it names the audio file)",
                        "ids are file stems such as id10012_0AXjxNXiEzo_00001, without slashes or spaces")
            continue
        if uid in first_line:
            rejects.add(split, file, line, uid, f"duplicate id (first on line {first_line[uid]})",
                        "remove the repeated row; every utterance id must be unique in a split")
            continue
        try:
            start, end = float(r["start_second"]), float(r["end_second"])
        except ValueError:
            rejects.add(split, file, line, uid, f"start_second={r['start_second']!r} / end_second="
                        f"{r['end_second']!r} are not numbers", "write both times in seconds, e.g. 1.25")
            continue
        if not (np.isfinite(start) and np.isfinite(end)) or start < 0 or end <= start:
            rejects.add(split, file, line, uid, f"bad segment: start_second={start}, end_second={end} "
                        "(need 0 <= start_second < end_second)", "correct the times or remove the row")
            continue
        if has_text and not r[TEXT_COL].strip():
            rejects.add(split, file, line, uid, "empty transcript (normalized_text)",
                        "fill in normalized_text or remove the row")
            continue
        first_line[uid] = line
        good.append(i)
        starts.append(start)
        ends.append(end)
    out = df.iloc[good].reset_index(drop=True)
    out["start"], out["end"] = np.asarray(starts, dtype=float), np.asarray(ends, dtype=float)
    if has_text:
        out[TEXT_COL] = out[TEXT_COL].str.strip()
    return out



# ---------------------------------------------------------------------------------------------------------------
# Text vocabulary inputs
# ---------------------------------------------------------------------------------------------------------------

def _read_dict_symbols(path: str) -> List[str]:
    """Symbols of a fairseq dict.txt (`symbol count [#fairseq:overwrite]` per line)."""
    symbols = []
    try:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise DataPrepError(f"not UTF-8 text (byte {e.object[e.start:e.start + 1]!r} at offset {e.start})", path,
                            None, "use SpeechT5's dict.txt (UTF-8)") from None
    for n, ln in enumerate(text.splitlines(keepends=True), start=1):
        body = ln.rstrip("\n")
        if body.endswith(" #fairseq:overwrite"):
            body = body[: -len(" #fairseq:overwrite")]
        parts = body.rsplit(" ", 1)
        if len(parts) < 2 or not parts[1].lstrip("-").isdigit():
            raise DataPrepError(f"not a `symbol count` line: {ln.rstrip()!r}", path, n,
                                "use SpeechT5's dict.txt (fairseq dictionary format)")
        symbols.append(parts[0])
    return symbols


def _check_vocab(spm_model: str, dict_txt: str, warnings: List[str]):
    """Load the SentencePiece model; dict.txt must list its pieces from id 4 on (index == piece id)."""
    import sentencepiece as spm

    for p, what in ((spm_model, "--spm"), (dict_txt, "--dict")):
        if not os.path.isfile(p):
            raise DataPrepError(f"{what} file {p} not found", fix="pass SpeechT5's spm_char.model and dict.txt")
    try:
        sp = spm.SentencePieceProcessor(model_file=spm_model)
    except Exception as e:  # sentencepiece raises plain OSError/RuntimeError depending on the failure
        raise DataPrepError(f"not a SentencePiece model ({e})", spm_model, None,
                            "pass SpeechT5's spm_char.model") from e
    symbols = _read_dict_symbols(dict_txt)
    pieces = [sp.id_to_piece(i) for i in range(4, sp.get_piece_size())]
    if symbols != pieces:
        warnings.append(f"{dict_txt} does not list the pieces of {spm_model} in id order (dict index != piece id); "
                        "check that the two files belong together")
    return sp


def _unknown_chars(sp, texts: Iterable[str]) -> Dict[str, int]:
    """{character: rows} for transcript characters the SentencePiece model can only encode as <unk>."""
    return dict(sorted(Counter(ch for t in texts for ch in unencodable_chars(sp, t)).items()))


def _reject_unencodable(df: pd.DataFrame, sp, spm_model: str, split: str, file: str, rejects: Rejects) -> pd.DataFrame:
    """Rows whose transcript SentencePiece cannot encode are bad rows: t2c refuses them too (never a silent <unk>)."""
    keep = []
    for i, (text, uid, line) in enumerate(zip(df[TEXT_COL], df["id"], df["line"])):
        bad = unencodable_chars(sp, text)
        if bad:
            rejects.add(split, file, int(line), uid, f"transcript character(s) {''.join(bad)!r} cannot be encoded by "
                        f"{spm_model} (they would become <unk>)",
                        "fix the transcript (e.g. transliterate the characters)")
        else:
            keep.append(i)
    return df.iloc[keep].reset_index(drop=True)
