"""xmodal-sweep-table: every job of one or more sweeps (finished, running, failed, not started) in one table.

    xmodal-sweep-table sweeps/sweep_lr_batch [more sweep dirs or job dirs] [--sort macro_f1] [--csv out.csv]

Per job: status (done / running / requeued / interrupted / failed / cancelled / pending), its overrides, the best
validation of fairseq's checkpoint metric (best_<metric>, the update it was reached at, and every other validation
metric of that same validation), the current update count, wall time summed over the job's starts (from its log, so
without time in a queue), number of starts and requeues, the updates it resumed at, the last error line of a failed
job, and its folder. Metrics come from hydra_train.log (log_format json or simple); status from DONE and
sweep_status.jsonl (docs/sweeps.md). Markdown to stdout by default; --format csv for CSV; --markdown/--csv also write
files.

Jobs whose overrides differ only in the seed (--seed-key, default common.seed; e.g. a sweep with common.seed=1,2,3)
are also shown as one row per condition: n, mean, std and 95% t-interval over seeds of every metric (--groups-csv
writes it), followed by the comparisons the sweep defines: conditions that differ in one swept setting with two values
(trained vs frozen, warm-up on vs off), and each transplanted init file `S.transferred.pt` against its controls
`S.<init>.pt`; t-tests over seeds of the best checkpoint metric, with a verdict.
"""
import argparse
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from fairseq_xmodal import console, sweeps
from fairseq_xmodal.evaluation import seeds, tables
from fairseq_xmodal.files import atomic_write_text
from .errors import console_main, refuse_existing

FIRST = ["job", "status"]
LAST = ["num_updates", "max_update", "wall_s", "attempts", "requeues", "resumed_at", "overrides", "error", "path"]


def collect(sweep_dirs: Sequence[str], stale_minutes: float = 30.0) -> List[Dict[str, Any]]:
    rows = []
    for sweep_dir in sweep_dirs:
        for job in sweeps.sweep_jobs(sweep_dir):
            rows.append(sweeps.read_job(job["path"], job["overrides"], stale_after_s=stale_minutes * 60))
    return rows


def columns(rows: List[Dict[str, Any]]) -> List[str]:
    best = sorted({k for r in rows for k in r if k.startswith("best_") and k != "best_update"})
    known = set(FIRST + LAST + best + ["best_update", "metric", "maximize"])
    metrics = sorted({k for r in rows for k in r if k not in known}, key=lambda k: (k.startswith("recall_"), k))
    return FIRST + best + (["best_update"] if best else []) + metrics + LAST


def sort_rows(rows: List[Dict[str, Any]], key: Optional[str], ascending: Optional[bool]) -> List[Dict[str, Any]]:
    if key is None:
        metric = next((r["metric"] for r in rows if r.get("metric")), None)
        key = f"best_{metric}" if metric else None
    if key is None:
        return rows
    if key not in {k for r in rows for k in r} and f"best_{key}" in {k for r in rows for k in r}:
        key = f"best_{key}"
    if ascending is None:  # the better end first
        maximize = next((r["maximize"] for r in rows if f"best_{r.get('metric')}" == key), "loss" not in key)
        ascending = not maximize

    def value(row):
        v = row.get(key)
        if isinstance(v, (int, float)):
            return (0, v if ascending else -v, "")
        if v not in (None, ""):
            return (1, 0, str(v))
        return (2, 0, "")

    return sorted(rows, key=value)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def to_csv(rows: List[Dict[str, Any]], cols: List[str]) -> str:
    return tables.csv_text(rows, cols, _cell)


def to_markdown(rows: List[Dict[str, Any]], cols: List[str]) -> str:
    """Overrides shared by every row are printed once above the table; the column keeps the ones that vary."""
    lists = [r.get("overrides", "").split() for r in rows]
    common = [o for o in (lists[0] if lists else []) if all(o in lst for lst in lists[1:])] if len(rows) > 1 else []
    shown = [{**row, "overrides": " ".join(o for o in lst if o not in common)} for row, lst in zip(rows, lists)]
    head = [f"Common overrides: `{' '.join(common)}`", ""] if common else []
    right = [c for c in cols if c not in ("job", "status", "overrides", "error", "path", "resumed_at")]
    return "\n".join(head + [tables.markdown(shown, cols, _cell, right)])


def _split(overrides: str) -> Dict[str, str]:
    return dict(o.split("=", 1) if "=" in o else (o, "") for o in overrides.split())


def seed_groups(rows: List[Dict[str, Any]], seed_key: str = "common.seed") -> Tuple[List[seeds.Group], List[Dict]]:
    """Jobs -> (groups, table rows): a condition is a job's overrides without `seed_key=...`."""
    keys = [k for k in seed_key.split(",") if k]  # several: the replicate is identified by all their values

    def condition(r):
        return " ".join(o for o in r.get("overrides", "").split() if o.split("=", 1)[0] not in keys)

    def seed(r):
        values = [_split(r.get("overrides", "")).get(k) for k in keys]
        return None if all(v is None for v in values) else ",".join(str(v) for v in values)

    groups = seeds.group(rows, condition, seed)
    numeric = sorted({k for r in rows for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                      and k not in ("attempts", "requeues", "max_update", "best_update")},
                     key=lambda k: (not k.startswith("best_"), k.startswith("recall_"), k))
    table = []
    for g in groups:
        statuses = [r["status"] for r in g.rows]
        row = {"condition": g.condition, "n": g.n, "seeds": ",".join(str(x) for x in g.seeds),
               "status": ", ".join(f"{st} {statuses.count(st)}" for st in dict.fromkeys(statuses)),
               "interval": seeds.interval_kind(g, "none (one seed)")}
        for k in numeric:
            row.update(seeds.summary(g, k))
        table.append(row)
    return groups, table


def sweep_pairs(groups: List[seeds.Group]) -> List[Tuple[seeds.Group, seeds.Group]]:
    """The comparisons a sweep defines: conditions equal except in one key that takes exactly two values in the sweep,
    or checkpoint.finetune_from_model files `S.transferred.pt` vs `S.<control init>.pt` (xmodal-prepare-transplants)."""
    conds = [(g, _split(g.condition)) for g in groups]
    values: Dict[str, set] = {}
    for _, d in conds:
        for k, v in d.items():
            values.setdefault(k, set()).add(v)
    pairs = []
    for i, (ga, da) in enumerate(conds):
        for gb, db in conds[i + 1:]:
            diff = [k for k in set(da) | set(db) if da.get(k) != db.get(k)]
            if len(diff) != 1:
                continue
            k = diff[0]
            va, vb = os.path.basename(da.get(k, "").strip("'")), os.path.basename(db.get(k, "").strip("'"))
            if k == "checkpoint.finetune_from_model":
                sa, sb = va.split("."), vb.split(".")
                if len(sa) == len(sb) == 3 and sa[0] == sb[0] and "transferred" in (sa[1], sb[1]):
                    pairs.append((ga, gb) if sa[1] == "transferred" else (gb, ga))
            elif len(values[k]) == 2:
                pairs.append((ga, gb))
    return pairs


def sweep_comparisons(groups: List[seeds.Group], metric: Optional[str], alpha: float = seeds.ALPHA) -> List[Dict]:
    if metric is None:
        return []
    out = []
    for ga, gb in sweep_pairs(groups):
        row = seeds.compare(ga, gb, metric, gb.condition, alpha=alpha)
        out.append(row)
    return out


@console_main("xmodal-sweep-table")
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="xmodal-sweep-table", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("sweep_dirs", nargs="+", help="hydra.sweep.dir of a sweep (or a single job folder)")
    parser.add_argument("--sort", default=None,
                        help="column to sort by, e.g. macro_f1 (= best_macro_f1), accuracy, loss, wall_s "
                             "(default: best_<checkpoint.best_checkpoint_metric>)")
    order = parser.add_mutually_exclusive_group()
    order.add_argument("--ascending", dest="ascending", action="store_true", default=None,
                       help="smallest first")
    order.add_argument("--descending", dest="ascending", action="store_false",
                       help="default: descending, ascending for losses")
    parser.add_argument("--format", choices=("markdown", "csv"), default="markdown", help="what goes to stdout")
    parser.add_argument("--markdown", metavar="FILE", help="also write the markdown table here")
    parser.add_argument("--csv", metavar="FILE", help="also write the CSV table here")
    parser.add_argument("--columns", help="comma-separated columns to keep (default: all)")
    parser.add_argument("--seed-key", default="common.seed",
                        help="the override(s) that only change the replicate, comma-separated (e.g. "
                             "common.seed,task.seed); jobs differing only in them form one condition")
    parser.add_argument("--groups-csv", metavar="FILE", help="also write the seed-group table as CSV")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level of the verdicts")
    parser.add_argument("--stale-minutes", type=float, default=30.0,
                        help="an unfinished job whose logs are older than this is 'interrupted', not 'running'")
    parser.add_argument("--overwrite", action="store_true", help="replace existing --markdown/--csv/--groups-csv files")
    console.add_verbose(parser)
    args = parser.parse_args(argv)
    for option, path in (("--markdown", args.markdown), ("--csv", args.csv), ("--groups-csv", args.groups_csv)):
        if path:
            refuse_existing(path, args.overwrite, option=option)

    rows = collect(args.sweep_dirs, args.stale_minutes)
    if not rows:
        print(f"xmodal-sweep-table: no jobs found in {' '.join(args.sweep_dirs)}", file=sys.stderr)
        return 1
    rows = sort_rows(rows, args.sort, args.ascending)
    cols = columns(rows)
    if args.columns:
        wanted = [c.strip() for c in args.columns.split(",") if c.strip()]
        unknown = [c for c in wanted if c not in cols]
        if unknown:
            print(f"xmodal-sweep-table: unknown columns {unknown}; available: {', '.join(cols)}", file=sys.stderr)
            return 2
        cols = wanted
    markdown, table_csv = to_markdown(rows, cols), to_csv(rows, cols)
    groups, group_rows = seed_groups(rows, args.seed_key)
    if any(g.n > 1 for g in groups):
        gcols = ["condition", "n", "seeds", "status", "interval"] + [c for c in group_rows[0] if c not in (
            "condition", "n", "seeds", "status", "interval")]
        metric = next((f"best_{r['metric']}" for r in rows if r.get("metric")), None)
        comps = sweep_comparisons(groups, metric, args.alpha)
        extra = (f"\nSeed groups ({args.seed_key}; mean, std and 95% t-interval over seeds):\n\n"
                 + tables.markdown(group_rows, gcols, _cell))
        if comps:
            extra += (f"\nComparisons ({metric}, A - B, alpha={args.alpha:g}):\n\n"
                      + tables.markdown(comps, [c for c in seeds.COMPARISON_COLUMNS if c not in ("task", "split")],
                                        _cell))
        markdown += extra
        if args.groups_csv:
            atomic_write_text(to_csv(group_rows, gcols), args.groups_csv)
    sys.stdout.write(markdown if args.format == "markdown" else table_csv)
    for path, text in ((args.markdown, markdown), (args.csv, table_csv)):
        if path:
            atomic_write_text(text, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
