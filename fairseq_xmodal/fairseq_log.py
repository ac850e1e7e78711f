"""The one reader of what a fairseq training run leaves behind: its log lines and its Hydra config.

Used by the sweep table (sweeps/results.py: status, wall time, best validation) and the report (evaluation/logs.py:
per-epoch curves, learning speed). Lines are read in both formats fairseq's loggers write:

  hydra (fairseq-hydra-train):  [2026-11-22 05:00:14,579][valid][INFO] - message
  plain (fairseq-train):        2026-11-22 05:00:14 | INFO | valid | message

and the numbers of a progress line in every log_format fairseq prints them:

  simple, end of epoch:  epoch 002 | valid on 'valid' subset | loss 1.6 | macro_f1 0.25 | num_updates 16
  simple, train_inner:   epoch 003:      4 / 8 loss=1.701, accuracy=0.3041, num_updates=20
  json:                  {"epoch": 2, "valid_loss": "1.6", "valid_macro_f1": "0.25", ...}

The run's configuration is `.hydra/config.yaml` beside the log (written by Hydra at job start). Only a log without a
.hydra folder (fairseq-train, or a log copied out of its run folder) falls back to the config dict fairseq_cli.train
prints at start: it is the only record of the configuration such a run has. That dict is read as a literal, never
executed.
"""
import ast
import datetime
import json
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Iterator, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf

HYDRA_LINE = re.compile(r"^\[(?P<time>[^\]]*)\]\[(?P<logger>[^\]]+)\]\[(?P<level>\w+)\] - (?P<msg>.*)$")
PLAIN_LINE = re.compile(r"^(?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) \| (?P<level>[A-Z]+) \| (?P<logger>[^|]+?) \| "
                        r"(?P<msg>.*)$")
_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(?:,\d+)?$")
_EPOCH = re.compile(r"^epoch (?P<epoch>\d+)$")
_VALID_ON = re.compile(r"^valid on '(?P<subset>[^']+)' subset$")
CONFIG_PREFIX = "{'_name'"  # fairseq_cli.train logs its whole config as a dict repr, starting so


@dataclass
class LogLine:
    time: Optional[datetime.datetime]  # None: no parseable timestamp
    logger: str
    level: str
    msg: str


def parse_line(line: str) -> Optional[LogLine]:
    """One line of a fairseq log -> LogLine, or None for anything else (tracebacks, prints, cut lines)."""
    line = line.rstrip("\n")
    m = HYDRA_LINE.match(line) or PLAIN_LINE.match(line)
    if not m:
        return None
    t = _TIME.match(m.group("time").strip())
    when = datetime.datetime.strptime(t.group(1), "%Y-%m-%d %H:%M:%S") if t else None
    return LogLine(when, m.group("logger").strip(), m.group("level"), m.group("msg"))


def log_lines(path: str) -> Iterator[LogLine]:
    """The log records of a file; a missing file has none."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                rec = parse_line(line)
                if rec is not None:
                    yield rec
    except FileNotFoundError:
        return


def _number(value: Any) -> Any:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return value
    return int(x) if x.is_integer() and "." not in str(value) and "e" not in str(value).lower() else x


def parse_stats(logger_name: str, msg: str) -> Dict[str, Any]:
    """The numbers of one fairseq progress line, log_format json or simple, without the `<subset>_` json prefix."""
    msg = msg.strip()
    if msg.startswith("{"):
        try:
            raw = json.loads(msg)
        except ValueError:
            return {}
        if not isinstance(raw, dict):
            return {}
        prefix = logger_name + "_"
        return {(k[len(prefix):] if k.startswith(prefix) else k): _number(v) for k, v in raw.items()}
    stats: Dict[str, Any] = {}
    if " | " in msg:  # simple, end of epoch / validation
        for part in msg.split(" | "):
            key, _, value = part.strip().rpartition(" ")
            if key and re.fullmatch(r"[\w.\-]+", key):
                stats[key] = _number(value)
    elif "=" in msg:  # simple, train_inner
        for key, value in re.findall(r"([\w.\-]+)=([^,\s]+)", msg):
            stats[key] = _number(value)
    return stats


@dataclass
class EpochStats:
    kind: str  # "train" | "valid"
    subset: Optional[str]  # the validation subset; None for train
    epoch: Optional[int]
    stats: Dict[str, Any]


def epoch_stats(rec: LogLine) -> Optional[EpochStats]:
    """An end-of-epoch train line or a validation line -> its numbers; per-update (train_inner) lines and everything
    else -> None."""
    tag, msg = rec.logger, rec.msg.strip()
    if tag == "train_inner":
        return None
    if msg.startswith("{"):
        try:
            raw = json.loads(msg)
        except ValueError:
            return None
        if not isinstance(raw, dict) or tag + "_loss" not in raw:  # a progress line of that subset has its loss
            return None
        stats = parse_stats(tag, msg)
        epoch = stats.get("epoch")
        kind = "train" if tag == "train" else "valid"
        return EpochStats(kind, None if kind == "train" else tag, int(epoch) if epoch is not None else None, stats)
    parts = [p.strip() for p in msg.split(" | ")]
    m = _EPOCH.match(parts[0])
    if not m or len(parts) < 2:
        return None
    v = _VALID_ON.match(parts[1])
    if v:
        kind, subset = "valid", v.group("subset")
    elif tag == "train":
        kind, subset = "train", None
    else:
        return None
    return EpochStats(kind, subset, int(m.group("epoch")), parse_stats(tag, msg))


def epoch_line(line: str) -> Optional[EpochStats]:
    """One raw log line -> its end-of-epoch train/valid numbers, or None."""
    rec = parse_line(line)
    return epoch_stats(rec) if rec is not None else None


# ---------------------------------------------------------------------------------------------- the run's config


def _plain(node: Any) -> Any:
    """A loaded config -> plain dicts/lists, resolving what resolves here; an interpolation of a resolver this process
    lacks (e.g. `${xmodal_user_dir:}`) stays as written."""
    if isinstance(node, DictConfig):
        raw = OmegaConf.to_container(node, resolve=False)
        out = {}
        for key in raw:
            try:
                out[key] = _plain(node[key])
            except Exception:  # an unresolvable interpolation
                out[key] = raw[key]
        return out
    if isinstance(node, ListConfig):
        try:
            return OmegaConf.to_container(node, resolve=True)
        except Exception:
            return OmegaConf.to_container(node, resolve=False)
    return node


def load_yaml(path: str) -> Optional[Any]:
    """A YAML file as an omegaconf object, or None when it is missing or unreadable."""
    try:
        return OmegaConf.load(path)
    except Exception:
        return None


def hydra_config(run_dir: str) -> Optional[Dict[str, Any]]:
    """`<run_dir>/.hydra/config.yaml` as a plain dict, or None when the run has no (readable) Hydra config."""
    cfg = load_yaml(os.path.join(run_dir, ".hydra", "config.yaml"))
    return _plain(cfg) if isinstance(cfg, DictConfig) else None


class _BareNamesToStrings(ast.NodeTransformer):
    """fairseq's config repr prints enum choices unquoted (`'long_utterances': error`); read them as strings."""

    def visit_Name(self, node):
        return ast.copy_location(ast.Constant(node.id), node)


def logged_config(msg: str) -> Optional[Dict[str, Any]]:
    """The config dict fairseq_cli.train logs at start -> dict, without running code (literal_eval of a parsed,
    sanitised tree); None for anything else."""
    if not msg.startswith(CONFIG_PREFIX):
        return None
    try:
        tree = _BareNamesToStrings().visit(ast.parse(msg, mode="eval"))
        value = ast.literal_eval(tree.body)
    except (ValueError, SyntaxError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def run_config(log_path: str, records: Iterable[LogLine] = ()) -> Optional[Dict[str, Any]]:
    """The config of the run that wrote `log_path`: its .hydra/config.yaml, else the last config dict among the log's
    records (a log without a .hydra folder), else None."""
    run_dir = os.path.dirname(os.path.abspath(log_path))
    if os.path.isdir(os.path.join(run_dir, ".hydra")):
        return hydra_config(run_dir)
    found = None
    for rec in records:  # a resumed run logs its config again at every start: the last one holds
        cfg = logged_config(rec.msg)
        found = cfg if cfg is not None else found
    return found
