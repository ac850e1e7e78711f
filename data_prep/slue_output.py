"""Writing the data folder of `xmodal-prepare-slue`: every split's files from the same rows, the copied vocabulary, the
rejected rows; all into `<out>.tmp-<pid>`, renamed into place at the end (an existing output is replaced only with
--overwrite, and survives a crash)."""
import os
import shutil
from typing import Dict, Iterable, Sequence, Tuple

import pandas as pd

from fairseq_xmodal.files import sha256

from .slue_rows import LABEL_COL, TEXT_COL, DataPrepError, Rejects, label_counts


def _write_lines(path: str, lines: Iterable[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for ln in lines:
            f.write(ln + "\n")


def write_split(out: str, name: str, table: pd.DataFrame, audio_root: str) -> None:
    """<name>.id/.tsv and, where the table has them, .wrd/.sent: all from the same rows, in the same order."""
    ids = list(table["id"])
    _write_lines(os.path.join(out, f"{name}.id"), ids)
    _write_lines(os.path.join(out, f"{name}.tsv"),
                 [audio_root] + [f"{uid}.flac\t{n}" for uid, n in zip(ids, table["n_samples"])])
    if TEXT_COL in table.columns:
        _write_lines(os.path.join(out, f"{name}.wrd"), table[TEXT_COL])
    if LABEL_COL in table.columns:
        _write_lines(os.path.join(out, f"{name}.sent"), table[LABEL_COL])


def publish(tmp: str, out: str, overwrite: bool) -> None:
    """Rename the finished temp folder into place; an existing output is renamed away first, deleted last."""
    if not os.path.lexists(out):
        os.rename(tmp, out)
        return
    if not overwrite:
        raise DataPrepError(f"output {out} already exists", fix="pass --overwrite or choose another --out")
    old = f"{out}.old-{os.getpid()}"
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        raise
    if os.path.isdir(old) and not os.path.islink(old):
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.unlink(old)


def is_within(path: str, parent: str) -> bool:
    path, parent = os.path.realpath(path), os.path.realpath(parent)
    return path == parent or path.startswith(parent.rstrip(os.sep) + os.sep)


def write_folder(tmp: str, splits: Dict[str, Tuple[pd.DataFrame, str, dict]], roots: Dict[str, str],
                 classes: Sequence[str], spm_model: str, dict_txt: str, rejects: Rejects) -> Dict[str, dict]:
    """Every split, labels.sent.txt, the vocabulary and rejected.tsv into `tmp`; returns each split's report entry."""
    derived: Dict[str, dict] = {}
    for name, (table, source, info) in splits.items():
        write_split(tmp, name, table, roots[source])
        entry = {"source": source, "audio_root": roots[source], "rows": int(len(table)),
                 "counts": label_counts(table),
                 "id_file_sha256": sha256(os.path.join(tmp, f"{name}.id"))}
        entry.update(info)
        derived[name] = entry
    _write_lines(os.path.join(tmp, "labels.sent.txt"), classes)
    shutil.copyfile(spm_model, os.path.join(tmp, "spm_char.model"))
    shutil.copyfile(dict_txt, os.path.join(tmp, "dict.txt"))
    if rejects.rows:
        pd.DataFrame(rejects.rows, columns=["split", "file", "line", "id", "reason"]).to_csv(
            os.path.join(tmp, "rejected.tsv"), sep="\t", index=False)
    return derived
