"""xmodal-report: tables and plots over training runs and evaluations.

Give run folders (with hydra_train.log), xmodal-evaluate output folders or metrics.json files, or any parent folder
(searched recursively). Writes to --out: report.md, results.csv (one row per evaluation: init, data variant, task,
ACC/P/R/F1), learning.csv (per training run: best/last validation macro-F1, updates until predictions stop being
single-label), report.json, loss.png, valid_f1.png, f1_vs_shots.png, confusion_<name>.png.
See docs/transfer_and_evaluation.md."""
import argparse
import os
import sys

from ..evaluation.report import build_report
from .errors import EXPECTED, console_main, one_line


@console_main("xmodal-report")
def main(argv=None):
    p = argparse.ArgumentParser(prog="xmodal-report", description=__doc__)
    p.add_argument("paths", nargs="+", help="run folders, evaluation folders, metrics.json files, or parents of them")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--subset", default=None,
                   help="validation subset for the learning curves (default: the run's first valid_subset)")
    p.add_argument("--overwrite", action="store_true", help="write into an existing, non-empty --out folder")
    args = p.parse_args(argv)
    if os.path.isdir(args.out) and os.listdir(args.out) and not args.overwrite:
        raise ValueError(f"{args.out} exists and is not empty; choose another --out or pass --overwrite")
    try:
        report = build_report(args.paths, args.out, args.subset)
    except EXPECTED as e:
        print(f"xmodal-report: error: {one_line(e)}", file=sys.stderr)
        return 2
    print(f"{len(report['results'])} evaluations, {len(report['learning'])} training runs")
    for s in report["learning"]:
        best = s["best_valid_macro_f1"]
        print(f"  {s['run']}: {s['task']} {s['train_subset']} from {s['init']}: best valid F1 "
              f"{'-' if best is None else f'{100 * best:.2f}'} (epoch {s['best_epoch']}), first multi-label "
              f"prediction at update {s['first_multi_label_update']}")
    print(f"wrote {os.path.join(os.path.abspath(args.out), 'report.md')} (+ CSV, JSON, PNG)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
