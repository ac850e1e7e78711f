"""xmodal-report: tables and plots over training runs and evaluations, with seeds aggregated and comparisons tested.

Give run folders (with hydra_train.log), xmodal-evaluate output folders or metrics.json files, or any parent folder
(searched recursively). Writes to --out: report.md, seed_groups.csv (one row per condition: n, mean, std and 95%
interval of ACC/P/R/F1, the majority baseline), comparisons.csv (macro-F1 differences with interval, test, p-value and
verdict), results.csv (one row per evaluation), learning.csv and learning_groups.csv (training runs), report.json,
loss.png, valid_f1.png (mean and band over seeds), f1_vs_shots.png (error bars), confusion_<condition>.png (summed
over seeds). `--power` prints how many seeds and dev utterances an effect needs. See docs/transfer_and_evaluation.md."""
import argparse
import os
import sys

from .. import console
from ..evaluation import stats
from ..evaluation.conditions import GROUP_COLUMNS
from ..evaluation.report import build_report, markdown_table
from ..evaluation.seeds import COMPARISON_COLUMNS
from .errors import EXPECTED, console_main, one_line


def print_power(alpha: float):
    print(f"Seeds per condition for 80% power (two-sided Welch t-test over seeds, alpha={alpha:g}); rows: true "
          f"macro-F1 difference in points, columns: seed-to-seed std of macro-F1 in points")
    rows = stats.power_table(alpha=alpha)
    print(markdown_table(rows, list(rows[0])))
    print("Dev utterances (one seed, Neutral-heavy 3-class split, 70% accurate model): bootstrap-scale standard error "
          "of macro-F1, and the difference two independently evaluated models separate with 80% power")
    rows = stats.utterance_table(alpha=alpha)
    print(markdown_table(rows, list(rows[0])))


@console_main("xmodal-report")
def main(argv=None):
    p = argparse.ArgumentParser(prog="xmodal-report", description=__doc__)
    p.add_argument("paths", nargs="*", help="run folders, evaluation folders, metrics.json files, or parents of them")
    p.add_argument("--out", metavar="DIR", help="output folder (report.md, CSV, JSON, PNG)")
    p.add_argument("--subset", default=None,
                   help="validation subset for the learning curves (default: the run's first valid_subset)")
    p.add_argument("--compare", action="append", default=[], metavar="A=B",
                   help="compare the macro-F1 of condition A with B on their shared evaluation splits, e.g. "
                        "t2c_from_s2c_k8=t2c_from_pretrained_k8 (B=majority: the majority-class baseline); repeatable. "
                        "Every condition is also compared with the majority baseline")
    p.add_argument("--seed-key", default="seed",
                   help="the token that marks a seed in run/evaluation folder names (seed3, seed=3, _seed3); rows "
                        "whose names differ only in it form one condition (default: seed)")
    p.add_argument("--group-by", default=None,
                   help="comma-separated result fields that define a condition instead of the name, e.g. "
                        "init,data_variant,task,split")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level of the verdicts (default 0.05)")
    p.add_argument("--permutations", type=int, default=stats.DEFAULT_PERMUTATIONS,
                   help="permutations of the paired test of two single-seed evaluations (default 10000)")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    p.add_argument("--power", action="store_true", help="print the power tables (seeds and dev utterances) and exit")
    p.add_argument("--overwrite", action="store_true", help="write into an existing, non-empty --out folder")
    console.add_verbose(p)
    args = p.parse_args(argv)
    if not 0 < args.alpha < 1 or args.permutations < 1:
        p.error("--alpha must be in (0, 1) and --permutations at least 1")
    if args.power:
        print_power(args.alpha)
        return 0
    if not args.paths or not args.out:
        p.error("give paths and --out (or --power)")
    if os.path.isdir(args.out) and os.listdir(args.out) and not args.overwrite:
        raise ValueError(f"{args.out} exists and is not empty; choose another --out or pass --overwrite")
    try:
        report = build_report(args.paths, args.out, args.subset, args.compare,
                              args.group_by.split(",") if args.group_by else None, args.seed_key, args.alpha,
                              plot=not args.no_plots, permutations=args.permutations)
    except EXPECTED as e:
        print(f"xmodal-report: error: {one_line(e)}", file=sys.stderr)
        return 2
    print(f"{len(report['results'])} evaluations in {len(report['seed_groups'])} conditions, "
          f"{len(report['learning'])} training runs")
    cols = ["condition", "task", "split", "n", "f1", "f1_std", "f1_lo", "f1_hi", "interval", "majority_f1",
            "f1_lo_above_majority"]
    if report["seed_groups"]:
        print("\nConditions (macro-F1 %, mean over seeds with 95% interval):")
        print(markdown_table(report["seed_groups"], [c for c in cols if c in GROUP_COLUMNS]))
    if report["comparisons"]:
        print("Comparisons (macro-F1 A - B):")
        print(markdown_table(report["comparisons"], [c for c in COMPARISON_COLUMNS if c != "metric"]))
    for fig, why in report["figures_not_drawn"].items():
        print(f"not drawn: {fig}: {why}")
    print(f"wrote {os.path.join(os.path.abspath(args.out), 'report.md')} (+ CSV, JSON, PNG)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
