"""`xmodal-prep-slue`: turn a released SLUE-VoxCeleb folder into the data folder of docs/data_format.md.

Steps: read the tsvs (columns by name) -> drop/keep labels -> row checks -> one parallel audio pass that cuts every
utterance out of its raw clip -> optionally carve `valid` out of fine-tune -> balanced and few-shot copies of the
training split -> write everything into `<out>.tmp-<pid>` and rename it into place. See docs/data_prep.md.
Reading and checking the tables: slue_rows.py; the audio pass: slue_audio.py; signals and workers: process_control.py.
"""
import argparse
import datetime
import json
import os
import shutil
import sys
import zlib
from collections import Counter
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from fairseq_xmodal.files import sha256

from .process_control import Interrupted, available_cpus, stale_temp_folders, stop_on_signals
from .slue_audio import SAMPLE_RATE, _run_audio_jobs
from .slue_rows import (BASE_CLASSES, DEFAULT_DROP, LABEL_COL, TEXT_COL, DataPrepError, Rejects,  # noqa: F401
                        _check_vocab, _reject_unencodable, _unknown_chars, check_rows, filter_labels, label_counts,
                        read_slue_tsv, resolve_labels)

BALANCE_METHODS = ("prune", "dup_floor", "dup_equal")
LABELLED_TSVS = {"fine-tune": "slue-voxceleb_fine-tune.tsv", "dev": "slue-voxceleb_dev.tsv"}
# A labelled test tsv (e.g. rebuilt from the labels published in 2024) wins over the blind one.
TEST_TSVS = ("slue-voxceleb_test.tsv", "slue-voxceleb_test_blind.tsv")


# ---------------------------------------------------------------------------------------------------------------
# Seeded table operations (pure: a table in, a table out; rows keep their input order)
# ---------------------------------------------------------------------------------------------------------------

RNG_ALGORITHM = ("numpy.random.default_rng([seed, zlib.crc32(step), zlib.crc32(label)]).permutation(n) over the "
                 "label's rows in input order; step is 'valid', 'prune', 'dup_equal' or 'few_shot'")


def _perm(seed: int, step: str, label: str, n: int) -> np.ndarray:
    """One permutation per (seed, step, label): a step's choice does not depend on which other steps ran."""
    return np.random.default_rng([seed, zlib.crc32(step.encode()), zlib.crc32(label.encode())]).permutation(n)


def _label_positions(df: pd.DataFrame) -> Dict[str, np.ndarray]:
    labels = df[LABEL_COL].to_numpy()
    return {lab: np.flatnonzero(labels == lab) for lab in sorted(set(labels))}


def carve_valid(df: pd.DataFrame, fraction: float, seed: int) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """(train, valid): per label, floor(fraction*n + 0.5) rows (at least 1 if n >= 2) go to valid."""
    if not 0.0 < fraction < 1.0:
        raise DataPrepError(f"--valid-from-fine-tune {fraction}: the fraction must be in (0, 1)", fix="e.g. 0.1")
    in_valid = np.zeros(len(df), dtype=bool)
    for label, pos in _label_positions(df).items():
        n = len(pos)
        k = int(np.floor(fraction * n + 0.5))
        if n >= 2:
            k = min(max(k, 1), n - 1)  # stratified means every class is seen on both sides
        in_valid[pos[_perm(seed, "valid", label, n)[:k]]] = True
    return df[~in_valid].reset_index(drop=True), df[in_valid].reset_index(drop=True)


BALANCE_ALGORITHMS = {
    "prune": "every class undersampled to the minority count m: the first m rows of the label's permutation",
    "dup_floor": "prior system's rule: each row of a class with n rows written floor(max/n) times (majority once)",
    "dup_equal": "each class replicated to exactly max rows: floor(max/n) copies of every row plus one more copy of "
                 "the first (max mod n) rows of the label's permutation",
}


def balance(df: pd.DataFrame, method: str, seed: int) -> pd.DataFrame:
    """A class-balanced copy of df (BALANCE_ALGORITHMS); copies of a row are written next to each other."""
    groups = _label_positions(df)
    if not groups:
        return df.copy()
    counts = {lab: len(pos) for lab, pos in groups.items()}
    reps = np.zeros(len(df), dtype=np.int64)
    if method == "prune":
        m = min(counts.values())
        for label, pos in groups.items():
            reps[pos[_perm(seed, "prune", label, len(pos))[:m]]] = 1
    elif method == "dup_floor":
        m = max(counts.values())
        for label, pos in groups.items():
            reps[pos] = m // len(pos)
    elif method == "dup_equal":
        m = max(counts.values())
        for label, pos in groups.items():
            reps[pos] = m // len(pos)
            reps[pos[_perm(seed, "dup_equal", label, len(pos))[: m % len(pos)]]] += 1
    else:
        raise DataPrepError(f"unknown balancing method {method!r}", fix=f"use one of {', '.join(BALANCE_METHODS)}")
    return df.iloc[np.repeat(np.arange(len(df)), reps)].reset_index(drop=True)


def few_shot(df: pd.DataFrame, ks: Iterable[int], seed: int) -> Dict[int, pd.DataFrame]:
    """{k: k rows per class}. One seeded permutation per class, k-prefixes of it, so smaller sets nest in larger."""
    groups = _label_positions(df)
    perms = {label: pos[_perm(seed, "few_shot", label, len(pos))] for label, pos in groups.items()}
    out = {}
    for k in sorted(set(ks)):
        short = {lab: len(p) for lab, p in perms.items() if len(p) < k}
        if k < 1 or short:
            raise DataPrepError(f"few-shot k={k} needs k >= 1 and k rows of every class; too few: {short}",
                                fix="choose smaller --few-shot values")
        out[k] = df.iloc[np.sort(np.concatenate([p[:k] for p in perms.values()]))].reset_index(drop=True)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------------------------

def _write_lines(path: str, lines: Iterable[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for ln in lines:
            f.write(ln + "\n")


def _write_split(out: str, name: str, table: pd.DataFrame, audio_root: str) -> None:
    """<name>.id/.tsv and, where the table has them, .wrd/.sent: all from the same rows, in the same order."""
    ids = list(table["id"])
    _write_lines(os.path.join(out, f"{name}.id"), ids)
    _write_lines(os.path.join(out, f"{name}.tsv"),
                 [audio_root] + [f"{uid}.flac\t{n}" for uid, n in zip(ids, table["n_samples"])])
    if TEXT_COL in table.columns:
        _write_lines(os.path.join(out, f"{name}.wrd"), table[TEXT_COL])
    if LABEL_COL in table.columns:
        _write_lines(os.path.join(out, f"{name}.sent"), table[LABEL_COL])


def _publish(tmp: str, out: str, overwrite: bool) -> None:
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


def _is_within(path: str, parent: str) -> bool:
    path, parent = os.path.realpath(path), os.path.realpath(parent)
    return path == parent or path.startswith(parent.rstrip(os.sep) + os.sep)


def format_counts(steps: List[dict], labels: Sequence[str]) -> str:
    """The report's counts as a text table: one row per (split, stage), one column per label."""
    head = ["split", "stage"] + list(labels) + ["total"]
    rows = [[s["split"], s["stage"]] + [str(s["counts"].get(lab, "")) if s["counts"] else "-" for lab in labels]
            + [str(s["total"])] for s in steps]
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


# ---------------------------------------------------------------------------------------------------------------
# The whole preparation
# ---------------------------------------------------------------------------------------------------------------

def prepare(slue_dir: str, out: str, spm_model: str, dict_txt: str, *, segmented_dir: Optional[str] = None,
            valid_from_fine_tune: Optional[float] = None, seed: int = 1, balance_methods: Sequence[str] = (),
            few_shot_ks: Sequence[int] = (), keep_labels: Sequence[str] = (), drop_labels: Sequence[str] = (),
            skip_bad: bool = False, overwrite: bool = False, workers: Optional[int] = None,
            log: Callable[[str], None] = print) -> dict:
    """Write the data folder `out` from the SLUE-VoxCeleb folder `slue_dir`; returns the report (prep_report.json)."""
    options = {k: v for k, v in locals().items() if k != "log"}
    options.update(balance_methods=list(balance_methods), few_shot_ks=sorted(set(few_shot_ks)),
                   keep_labels=sorted(set(keep_labels)), drop_labels=sorted(set(drop_labels)))
    workers = int(workers or available_cpus())
    if not isinstance(seed, int) or seed < 0:
        raise DataPrepError(f"seed {seed!r} must be a non-negative integer", fix="e.g. --seed 1")
    bad_methods = [m for m in balance_methods if m not in BALANCE_METHODS]
    if bad_methods:
        raise DataPrepError(f"unknown --balance {bad_methods}", fix=f"use none or {', '.join(BALANCE_METHODS)}")
    classes, dropped_labels = resolve_labels(keep_labels, drop_labels)
    out = os.path.abspath(out)
    if not os.path.isdir(slue_dir):
        raise DataPrepError(f"--slue-dir {slue_dir} is not a folder", fix="point it at the unpacked slue-voxceleb/")
    for src in [slue_dir] + ([segmented_dir] if segmented_dir else []):
        if _is_within(src, out):
            raise DataPrepError(f"--out {out} contains the input {src}; it would be replaced",
                                fix="write the output somewhere else")
    if os.path.lexists(out) and not overwrite:  # fail before the long audio pass, not after it
        raise DataPrepError(f"output {out} already exists", fix="pass --overwrite or choose another --out")
    if segmented_dir and not os.path.isdir(segmented_dir):
        raise DataPrepError(f"--segmented-dir {segmented_dir} is not a folder",
                            fix="point it at the folder holding fine-tune/, dev/, test/ with <id>.flac")

    warnings: List[str] = []
    stale = stale_temp_folders(out)
    if stale:
        warnings.append(f"temp folder(s) left by an interrupted earlier run (its process is gone): {', '.join(stale)}; "
                        f"remove them with: rm -rf {' '.join(stale)}")
        log(f"warning: {warnings[-1]}")
    sp = _check_vocab(spm_model, dict_txt, warnings)
    rejects = Rejects(skip_bad)

    # Which tsvs: fine-tune and dev always, test if present (labelled one preferred).
    sources = {s: os.path.join(slue_dir, name) for s, name in LABELLED_TSVS.items()}
    for s, path in sources.items():
        if not os.path.isfile(path):
            raise DataPrepError(f"{os.path.basename(path)} not found in {slue_dir}", path, None,
                                "point --slue-dir at the unpacked slue-voxceleb/ folder")
    test_tsv = next((os.path.join(slue_dir, n) for n in TEST_TSVS if os.path.isfile(os.path.join(slue_dir, n))), None)
    if test_tsv:
        sources["test"] = test_tsv
    else:
        warnings.append(f"no test tsv ({' or '.join(TEST_TSVS)}) in {slue_dir}: no test split written")

    steps: List[dict] = []

    def step(split: str, stage: str, table: pd.DataFrame) -> None:
        steps.append({"split": split, "stage": stage, "counts": label_counts(table), "total": int(len(table))})

    tables: Dict[str, pd.DataFrame] = {}
    dropped: Dict[str, Dict[str, int]] = {}
    unknown_chars: Dict[str, Dict[str, int]] = {}
    for split, path in sources.items():
        required = ["id", "start_second", "end_second"] + ([TEXT_COL, LABEL_COL] if split != "test" else [])
        df = read_slue_tsv(path, split, required, rejects)
        step(split, "raw", df)
        if LABEL_COL in df.columns:
            df, dropped[split] = filter_labels(df, classes, dropped_labels, split=split, file=path, rejects=rejects)
            step(split, "labels filtered", df)
        tables[split] = check_rows(df, split, path, rejects)
        if TEXT_COL in df.columns:
            unknown_chars[split] = _unknown_chars(sp, tables[split][TEXT_COL])
            if unknown_chars[split]:  # the rule t2c applies too: a character SentencePiece cannot encode is an error
                tables[split] = _reject_unencodable(tables[split], sp, spm_model, split, path, rejects)

    tmp = f"{out}.tmp-{os.getpid()}"
    if os.path.lexists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    with stop_on_signals():  # SIGTERM/SIGINT -> Interrupted: the except below removes tmp, the pool is terminated
        try:
            # One audio pass over every utterance of every split, in one pool (both cores busy throughout).
            jobs, owners = [], []
            for split, df in tables.items():
                if segmented_dir:
                    srcs = [os.path.join(segmented_dir, split, f"{u}.flac") for u in df["id"]]
                    dsts = [None] * len(df)
                else:
                    os.makedirs(os.path.join(tmp, "audio", split))
                    srcs = [os.path.join(slue_dir, f"{split}_raw", f"{u}.flac") for u in df["id"]]
                    dsts = [os.path.join(tmp, "audio", split, f"{u}.flac") for u in df["id"]]
                jobs += list(zip(srcs, dsts, df["start"], df["end"]))
                owners += [(split, i) for i in range(len(df))]
            t0 = datetime.datetime.now()
            # the audio pass runs even with bad rows (bad ones are left out), so one run reports every bad row
            results = _run_audio_jobs(jobs, workers)
            audio_seconds = (datetime.datetime.now() - t0).total_seconds()
            sizes = {s: np.zeros(len(df), dtype=np.int64) for s, df in tables.items()}
            for (split, i), job, (n, reason, fix) in zip(owners, jobs, results):
                if reason is None:
                    sizes[split][i] = n
                    continue
                row = tables[split].iloc[i]
                rejects.add(split, sources[split], int(row["line"]), row["id"], reason, fix)
            rejects.raise_if_any()
            roots = {}
            for split in list(tables):
                df = tables[split].assign(n_samples=sizes[split])
                tables[split] = df[df["n_samples"] > 0].reset_index(drop=True)
                step(split, "checked", tables[split])
                roots[split] = (os.path.abspath(os.path.join(segmented_dir, split)) if segmented_dir
                                else f"audio/{split}")  # relative: the folder can be moved as a whole

            # Splits to write: name -> (table, audio source split, how it was made).
            splits: Dict[str, Tuple[pd.DataFrame, str, dict]] = {}
            derived: Dict[str, dict] = {}
            if valid_from_fine_tune is not None:
                train, valid = carve_valid(tables["fine-tune"], valid_from_fine_tune, seed)
                t_name = "train"
                splits["train"] = (train, "fine-tune", {"from": "fine-tune", "algorithm": "carve_valid: the rest"})
                splits["valid"] = (valid, "fine-tune", {
                    "from": "fine-tune", "algorithm": f"carve_valid: per label floor({valid_from_fine_tune}*n+0.5) rows "
                    "(at least 1 and at most n-1 when n >= 2), the first of the label's permutation",
                    "ids": list(valid["id"])})
                step("train", "carved", train)
                step("valid", "carved", valid)
            else:
                t_name = "fine-tune"
                splits["fine-tune"] = (tables["fine-tune"], "fine-tune", {})
            splits["dev"] = (tables["dev"], "dev", {})
            if "test" in tables:
                splits["test"] = (tables["test"], "test", {})
            t_table = splits[t_name][0]
            if t_table.empty:
                raise DataPrepError(f"the training split {t_name} has no rows left",
                                    fix="check the label options and rejected.tsv")
            missing = [c for c in classes if c not in set(t_table[LABEL_COL])]
            if missing:
                warnings.append(f"{t_name} has no rows of class(es) {missing}")
            t_counts = label_counts(t_table)
            for method in dict.fromkeys(balance_methods):
                bal = balance(t_table, method, seed)
                info = {"from": t_name, "algorithm": BALANCE_ALGORITHMS[method]}
                if method == "prune":
                    info["ids"] = list(bal["id"])
                else:
                    base = {lab: max(t_counts.values()) // n for lab, n in t_counts.items()}
                    info["copies_per_label"] = base
                    if method == "dup_equal":
                        label_of = dict(zip(t_table["id"], t_table[LABEL_COL]))
                        info["extra_copy_ids"] = sorted(u for u, c in Counter(bal["id"]).items() if c > base[label_of[u]])
                splits[f"{t_name}.{method}"] = (bal, "fine-tune", info)
                step(f"{t_name}.{method}", "balanced", bal)
            for k, sub in few_shot(t_table, few_shot_ks, seed).items():
                splits[f"{t_name}.k{k}"] = (sub, "fine-tune", {
                    "from": t_name, "algorithm": f"few_shot: first {k} rows of each label's permutation (nested)",
                    "ids": list(sub["id"])})
                step(f"{t_name}.k{k}", "few-shot", sub)

            for name, (table, source, info) in splits.items():
                _write_split(tmp, name, table, roots[source])
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
            order = {}
            for s in steps:
                order.setdefault(s["split"], len(order))
            steps.sort(key=lambda s: order[s["split"]])  # stable: each split's stages together, in processing order
            inputs = {p: {"path": os.path.abspath(p), "sha256": sha256(p)}
                      for p in list(sources.values()) + [spm_model, dict_txt]}
            report = {
                "tool": "xmodal-prep-slue",
                "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "seed": seed,
                "options": options,
                "inputs": {os.path.basename(p): v for p, v in inputs.items()},
                "classes": classes,
                "dropped_labels": dropped_labels,
                "dropped": dropped,
                "rejected": dict(Counter(r["split"] for r in rejects.rows)),
                "training_split": t_name,
                "audio": {"segmented_dir": os.path.abspath(segmented_dir) if segmented_dir else None,
                          "sample_rate": SAMPLE_RATE, "utterances": len(jobs), "workers": workers,
                          "seconds": round(audio_seconds, 2),
                          "rule": "whole files <segmented_dir>/<split>/<id>.flac" if segmented_dir else
                          "samples [int(start_second*16000), int(end_second*16000)) of <split>_raw/<id>.flac"},
                "rng": RNG_ALGORITHM,
                "steps": steps,
                "splits": derived,
                "unknown_chars": unknown_chars,
                "warnings": warnings,
            }
            with open(os.path.join(tmp, "prep_report.json"), "w", encoding="utf-8") as f:
                json.dump(report, f, indent=1, ensure_ascii=False)
                f.write("\n")
            _publish(tmp, out, overwrite)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    labels = classes + [lab for lab in dropped_labels if any(lab in s["counts"] for s in steps)]
    log(format_counts(steps, labels))
    for w in warnings:
        log(f"warning: {w}")
    if rejects.rows:
        log(f"{len(rejects.rows)} bad row(s) skipped, listed in {os.path.join(out, 'rejected.tsv')}")
    log(f"wrote {out} ({len(derived)} splits; audio pass: {len(jobs)} utterances in {audio_seconds:.1f} s "
        f"with {workers} worker(s))")
    return report


def _comma_list(values: Optional[List[str]]) -> List[str]:
    return [v.strip() for val in values or [] for v in val.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xmodal-prep-slue", description=__doc__.split("\n")[0])
    p.add_argument("--slue-dir", required=True, help="unpacked slue-voxceleb/ folder (tsvs and *_raw/ audio)")
    p.add_argument("--out", required=True, help="data folder to write (docs/data_format.md)")
    p.add_argument("--spm", required=True, help="SpeechT5 spm_char.model (copied into the output)")
    p.add_argument("--dict", required=True, help="SpeechT5 dict.txt (copied into the output)")
    p.add_argument("--segmented-dir", help="use already segmented audio <dir>/<split>/<id>.flac instead of cutting")
    p.add_argument("--valid-from-fine-tune", type=float, metavar="FRACTION",
                   help="carve a stratified `valid` split out of fine-tune; the rest becomes `train`")
    p.add_argument("--seed", type=int, default=1, help="seed of every random choice (default 1)")
    p.add_argument("--balance", action="append", metavar="METHOD",
                   help="none, prune, dup_floor, dup_equal (repeatable or comma list): extra balanced splits")
    p.add_argument("--few-shot", action="append", metavar="K",
                   help="k examples per class, e.g. 4,8,16 (nested subsets of the training split)")
    p.add_argument("--keep-label", action="append", default=[], metavar="LABEL",
                   help="keep rows with this label as a class of its own (e.g. Disagreement)")
    p.add_argument("--drop-label", action="append", default=[], metavar="LABEL",
                   help=f"drop rows with this label (always dropped unless kept: {', '.join(DEFAULT_DROP)})")
    p.add_argument("--skip-bad", action="store_true", help="skip bad rows, list them in rejected.tsv")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--workers", type=int, default=None,
                   help="processes for the audio pass (default: the CPUs this process may use, os.sched_getaffinity)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        balance_methods = [m for m in _comma_list(args.balance) if m != "none"]
        try:
            ks = [int(k) for k in _comma_list(args.few_shot)]
        except ValueError:
            raise DataPrepError(f"--few-shot {args.few_shot}: expected integers", fix="e.g. --few-shot 4,8,16")
        with stop_on_signals():  # also during the table checks, before prepare() has a temp folder
            prepare(args.slue_dir, args.out, args.spm, args.dict, segmented_dir=args.segmented_dir,
                    valid_from_fine_tune=args.valid_from_fine_tune, seed=args.seed, balance_methods=balance_methods,
                    few_shot_ks=ks, keep_labels=_comma_list(args.keep_label), drop_labels=_comma_list(args.drop_label),
                    skip_bad=args.skip_bad, overwrite=args.overwrite, workers=args.workers)
    except DataPrepError as e:
        print(f"xmodal-prep-slue: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full or read-only output location
        from fairseq_xmodal.cli.errors import describe_os_error

        print(f"xmodal-prep-slue: error: {describe_os_error(e)}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"xmodal-prep-slue: interrupted by {e}: stopped the audio workers and removed the temp folder; "
              f"{args.out} was not changed", file=sys.stderr)
        return 128 + e.signum
    return 0


if __name__ == "__main__":
    sys.exit(main())
