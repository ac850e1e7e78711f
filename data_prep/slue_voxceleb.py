"""`xmodal-prepare-slue`: turn a released SLUE-VoxCeleb folder into the data folder of docs/data_format.md.

Steps: read the tsvs (columns by name) -> drop/keep labels -> row checks -> one parallel audio pass that cuts every
utterance out of its raw clip -> optionally carve `valid` out of fine-tune -> balanced and few-shot copies of the
training split -> write everything into `<out>.tmp-<pid>` and rename it into place. See docs/data_prep.md.
Reading and checking the tables: slue_rows.py; the audio pass: slue_audio.py; the derived (seeded) splits:
slue_splits.py; writing the folder: slue_output.py; signals and workers: process_control.py.
"""
import argparse
import datetime
import json
import os
import shutil
import sys
from collections import Counter
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import pandas as pd

from fairseq_xmodal import console
from fairseq_xmodal.files import sha256

from .process_control import Interrupted, available_cpus, stale_temp_folders, stop_on_signals
from .slue_audio import SAMPLE_RATE, audio_pass
from .slue_output import is_within, publish, write_folder
from .slue_rows import (BASE_CLASSES, DEFAULT_DROP, LABEL_COL, TEXT_COL, DataPrepError, Rejects,  # noqa: F401
                        _check_vocab, _reject_unencodable, _unknown_chars, check_rows, filter_labels, label_counts,
                        read_slue_tsv, resolve_labels)
from .slue_splits import BALANCE_METHODS, RNG_ALGORITHM, derive_splits
LABELLED_TSVS = {"fine-tune": "slue-voxceleb_fine-tune.tsv", "dev": "slue-voxceleb_dev.tsv"}
# A labelled test tsv (e.g. rebuilt from the labels published in 2024) wins over the blind one.
TEST_TSVS = ("slue-voxceleb_test.tsv", "slue-voxceleb_test_blind.tsv")


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

def check_options(slue_dir: str, out: str, segmented_dir: Optional[str], seed: int, balance_methods: Sequence[str],
                  keep_labels: Sequence[str], drop_labels: Sequence[str], overwrite: bool
                  ) -> Tuple[List[str], List[str]]:
    """Everything about the options that can fail, before any table is read (and long before the audio pass);
    returns (classes, dropped labels)."""
    if not isinstance(seed, int) or seed < 0:
        raise DataPrepError(f"seed {seed!r} must be a non-negative integer", fix="e.g. --seed 1")
    bad_methods = [m for m in balance_methods if m not in BALANCE_METHODS]
    if bad_methods:
        raise DataPrepError(f"unknown --balance {bad_methods}", fix=f"use none or {', '.join(BALANCE_METHODS)}")
    classes, dropped_labels = resolve_labels(keep_labels, drop_labels)
    if not os.path.isdir(slue_dir):
        raise DataPrepError(f"--slue-dir {slue_dir} is not a folder", fix="point it at the unpacked slue-voxceleb/")
    for src in [slue_dir] + ([segmented_dir] if segmented_dir else []):
        if is_within(src, out):
            raise DataPrepError(f"--out {out} contains the input {src}; it would be replaced",
                                fix="write the output somewhere else")
    if os.path.lexists(out) and not overwrite:  # fail before the long audio pass, not after it
        raise DataPrepError(f"output {out} already exists", fix="pass --overwrite or choose another --out")
    if segmented_dir and not os.path.isdir(segmented_dir):
        raise DataPrepError(f"--segmented-dir {segmented_dir} is not a folder",
                            fix="point it at the folder holding fine-tune/, dev/, test/ with <id>.flac")
    return classes, dropped_labels


def find_sources(slue_dir: str, warnings: List[str]) -> Dict[str, str]:
    """Which tsvs: fine-tune and dev always, test if present (labelled one preferred)."""
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
    return sources


def read_tables(sources: Dict[str, str], classes: Sequence[str], dropped_labels: Sequence[str], sp, spm_model: str,
                rejects: Rejects, step) -> Tuple[Dict[str, pd.DataFrame], Dict[str, Dict[str, int]],
                                                 Dict[str, Dict[str, int]]]:
    """Read -> filter labels -> check rows, per split: (tables, dropped label counts, unknown characters)."""
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
    return tables, dropped, unknown_chars


def prepare(slue_dir: str, out: str, spm_model: str, dict_txt: str, *, segmented_dir: Optional[str] = None,
            valid_from_fine_tune: Optional[float] = None, seed: int = 1, balance_methods: Sequence[str] = (),
            few_shot_ks: Sequence[int] = (), keep_labels: Sequence[str] = (), drop_labels: Sequence[str] = (),
            skip_bad: bool = False, overwrite: bool = False, workers: Optional[int] = None,
            log: Callable[[str], None] = print) -> dict:
    """Write the data folder `out` from the SLUE-VoxCeleb folder `slue_dir`; returns the report (prep_report.json).

    read (read_tables) -> filter -> audio (slue_audio.audio_pass) -> derive (slue_splits.derive_splits) -> write
    (slue_output.write_folder), all into `<out>.tmp-<pid>`, published at the end."""
    options = {k: v for k, v in locals().items() if k != "log"}
    options.update(balance_methods=list(balance_methods), few_shot_ks=sorted(set(few_shot_ks)),
                   keep_labels=sorted(set(keep_labels)), drop_labels=sorted(set(drop_labels)))
    workers = int(workers or available_cpus())
    out = os.path.abspath(out)
    classes, dropped_labels = check_options(slue_dir, out, segmented_dir, seed, balance_methods, keep_labels,
                                            drop_labels, overwrite)

    warnings: List[str] = []
    stale = stale_temp_folders(out)
    if stale:
        warnings.append(f"temp folder(s) left by an interrupted earlier run (its process is gone): {', '.join(stale)}; "
                        f"remove them with: rm -rf {' '.join(stale)}")
        log(f"warning: {warnings[-1]}")
    sp = _check_vocab(spm_model, dict_txt, warnings)
    rejects = Rejects(skip_bad)
    sources = find_sources(slue_dir, warnings)

    steps: List[dict] = []

    def step(split: str, stage: str, table: pd.DataFrame) -> None:
        steps.append({"split": split, "stage": stage, "counts": label_counts(table), "total": int(len(table))})

    tables, dropped, unknown_chars = read_tables(sources, classes, dropped_labels, sp, spm_model, rejects, step)

    tmp = f"{out}.tmp-{os.getpid()}"
    if os.path.lexists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    with stop_on_signals():  # SIGTERM/SIGINT -> Interrupted: the except below removes tmp, the pool is terminated
        try:
            audio = audio_pass(tables, sources, tmp, slue_dir, segmented_dir, workers, rejects, step)
            splits, t_name = derive_splits(audio.tables, valid_from_fine_tune, seed, balance_methods, few_shot_ks,
                                           classes, warnings, step)
            derived = write_folder(tmp, splits, audio.roots, classes, spm_model, dict_txt, rejects)
            order = {}
            for s in steps:
                order.setdefault(s["split"], len(order))
            steps.sort(key=lambda s: order[s["split"]])  # stable: each split's stages together, in processing order
            inputs = {p: {"path": os.path.abspath(p), "sha256": sha256(p)}
                      for p in list(sources.values()) + [spm_model, dict_txt]}
            report = {
                "tool": "xmodal-prepare-slue",
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
                          "sample_rate": SAMPLE_RATE, "utterances": audio.utterances, "workers": workers,
                          "seconds": round(audio.seconds, 2),
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
            publish(tmp, out, overwrite)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    labels = classes + [lab for lab in dropped_labels if any(lab in s["counts"] for s in steps)]
    log(format_counts(steps, labels))
    for w in warnings:
        log(f"warning: {w}")
    if rejects.rows:
        log(f"{len(rejects.rows)} bad row(s) skipped, listed in {os.path.join(out, 'rejected.tsv')}")
    log(f"wrote {out} ({len(derived)} splits; audio pass: {audio.utterances} utterances in {audio.seconds:.1f} s "
        f"with {workers} worker(s))")
    return report


def _comma_list(values: Optional[List[str]]) -> List[str]:
    return [v.strip() for val in values or [] for v in val.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xmodal-prepare-slue", description=__doc__.split("\n")[0])
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
    console.add_verbose(p)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    console.configure(args.verbose)
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
        print(f"xmodal-prepare-slue: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full or read-only output location
        from fairseq_xmodal.cli.errors import describe_os_error

        if e.filename and os.path.abspath(e.filename).startswith(os.path.abspath(args.out) + ".tmp-"):
            e = OSError(e.errno, e.strerror, args.out)  # the temp folder is removed by now: name the output's path
        print(f"xmodal-prepare-slue: error: {describe_os_error(e)}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"xmodal-prepare-slue: interrupted by {e}: stopped the audio workers and removed the temp folder; "
              f"{args.out} was not changed", file=sys.stderr)
        return 128 + e.signum
    return 0


if __name__ == "__main__":
    sys.exit(main())
