"""xmodal-report: fairseq log parsing in every format fairseq writes, learning speed (updates until predictions stop
being single-label), and the table/CSV/PNG report over real few-shot and full fine-tuning runs."""
import csv
import io
import logging
import os
import shutil
from collections import OrderedDict

import pytest

from conftest import hydra_train, run_cli
from fairseq_xmodal.evaluation.evaluate import EvalConfig, evaluate_checkpoint
from fairseq_xmodal.evaluation.logs import learning_speed, parse_training_log, shots_of, single_label
from conftest import shared_transfer, t2c_from_s2c
from fairseq_xmodal.fairseq_log import epoch_line

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------------------------------------------
# Log lines written by fairseq's own progress bars, in hydra's and fairseq-train's line formats


HYDRA_FMT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"
PLAIN_FMT = "%(asctime)s | %(levelname)s | %(name)s | %(message)s"


def fairseq_lines(log_format, line_format, epochs):
    """[(epoch, train stats, valid stats)] -> log text exactly as fairseq_cli.train prints it."""
    from fairseq.logging import progress_bar

    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(logging.Formatter(line_format, datefmt="%Y-%m-%d %H:%M:%S"))
    log = logging.getLogger(progress_bar.__name__)
    log.addHandler(handler)
    level = log.level
    log.setLevel(logging.INFO)  # independent of whatever another test (or CLI main()) did to the root logger
    try:
        for epoch, train, valid in epochs:
            inner = progress_bar.progress_bar([0], log_format=log_format, log_interval=1, epoch=epoch)
            for _ in inner:  # a per-update line, which the parser must skip
                inner.log(OrderedDict(loss=9.0, num_updates=1), tag="train_inner", step=1)
            progress_bar.progress_bar([], log_format=log_format, epoch=epoch, prefix="valid on 'valid' subset").print(
                OrderedDict(valid), tag="valid", step=valid["num_updates"])
            progress_bar.progress_bar([], log_format=log_format, epoch=epoch).print(
                OrderedDict(train), tag="train", step=train["num_updates"])
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    return buf.getvalue()


def valid_stats(acc, prec, recalls, updates, f1=0.2):
    return {"loss": 1.5, "accuracy": acc, "macro_f1": f1, "macro_precision": prec,
            **{f"recall_{k}": v for k, v in zip(("Negative", "Neutral", "Positive"), recalls)}, "num_updates": updates}


EPOCHS = [
    (1, {"loss": 1.9, "num_updates": 8}, valid_stats(0.3333, 0.1111, (1, 0, 0), 8, f1=0.1667)),
    (2, {"loss": 1.7, "num_updates": 16}, valid_stats(0.5, 0.4, (1, 0, 0.5), 16, f1=0.45)),
    (3, {"loss": 1.6, "num_updates": 24}, valid_stats(0.3333, 0.1111, (0, 1, 0), 24, f1=0.1667)),
    (4, {"loss": 1.2, "num_updates": 32}, valid_stats(0.6667, 0.5, (1, 0, 1), 32, f1=0.5556)),
    (5, {"loss": 0.9, "num_updates": 40}, valid_stats(0.75, 0.8, (1, 0.5, 0.75), 40, f1=0.74)),
]


@pytest.mark.parametrize("log_format", ["simple", "json"])
@pytest.mark.parametrize("line_format", [HYDRA_FMT, PLAIN_FMT])
def test_parses_every_fairseq_log_format(log_format, line_format, tmp_path):
    text = fairseq_lines(log_format, line_format, EPOCHS)
    cfg_line = ("[2024-01-01 10:00:00,000][fairseq_cli.train][INFO] - {'_name': None, 'task': {'_name': 't2c', "
                "'long_utterances': error, 'data': '/d'}, 'dataset': {'train_subset': 'train.k8', 'valid_subset': "
                "'valid'}, 'checkpoint': {'finetune_from_model': '/x/init.pt'}}\n")
    # A resumed run repeats epoch 5 with other numbers: the later line wins.
    resumed = fairseq_lines(log_format, line_format, [(5, {"loss": 0.8, "num_updates": 40},
                                                       valid_stats(0.8, 0.8, (1, 0.6, 0.8), 40, f1=0.8))])
    path = tmp_path / "hydra_train.log"
    assert text.count("][train_inner][" if line_format == HYDRA_FMT else "| train_inner |") == len(EPOCHS)
    path.write_text(cfg_line + text + "garbage line | epoch 7 | nothing\n" + resumed)
    run = parse_training_log(str(path))
    assert sorted(run.train) == [1, 2, 3, 4, 5] and list(run.valid) == ["valid"]
    assert run.valid["valid"][3]["recall_Neutral"] == 1 and run.valid["valid"][4]["macro_f1"] == pytest.approx(0.5556)
    assert run.train[2]["loss"] == pytest.approx(1.7) and run.valid["valid"][5]["macro_f1"] == pytest.approx(0.8)
    assert (run.task, run.train_subset, run.shots, run.init) == ("t2c", "train.k8", 8, "init.pt")
    speed = learning_speed(run)
    assert [c["single_label"] for c in speed["curve"]] == [True, False, True, False, False]
    assert (speed["first_multi_label_update"], speed["first_multi_label_epoch"]) == (16, 2)
    assert (speed["stable_multi_label_update"], speed["stable_multi_label_epoch"]) == (32, 4)
    assert speed["best_valid_macro_f1"] == pytest.approx(0.8) and speed["best_epoch"] == 5
    assert [c["train_loss"] for c in speed["curve"]] == pytest.approx([1.9, 1.7, 1.6, 1.2, 0.8])


def test_single_label_rule_and_shots():
    assert single_label({"recall_a": 1, "recall_b": 0, "recall_c": 0, "accuracy": 0.7822, "macro_precision": 0.2607})
    # Same recalls, but another label was predicted for some rows (precision no longer accuracy / 3).
    assert not single_label({"recall_a": 1, "recall_b": 0, "recall_c": 0, "accuracy": 0.7822, "macro_precision": 0.3})
    assert single_label({"recall_a": 1, "recall_b": 0}) and not single_label({"recall_a": 1, "recall_b": 0.5})
    assert single_label({"loss": 1.0}) is None
    assert epoch_line("[t][train_inner][INFO] - epoch 001:      4 / 8 loss=1.694, accuracy=0.26") is None
    subsets = ("train.k4", "fine-tune.k16", "train", "train.prune", None)
    assert [shots_of(s) for s in subsets] == [4, 16, None, None, None]


# ----------------------------------------------------------------------------------------------------------------
# Real runs


def fewshot_corpus(corpus_dir, root, ks=(2, 4)):
    """A copy of the corpus (audio shared by link) with nested k-per-class training splits train.k2 ⊂ train.k4."""
    root = str(root)
    shutil.copytree(corpus_dir, root, ignore=shutil.ignore_patterns("audio"))
    os.symlink(os.path.join(corpus_dir, "audio"), os.path.join(root, "audio"))
    files = {}
    for ext in ("id", "wrd", "sent"):
        with open(os.path.join(root, f"train.{ext}")) as f:
            files[ext] = f.read().splitlines()
    with open(os.path.join(root, "train.tsv")) as f:
        tsv = f.read().splitlines()
    for k in ks:
        seen, rows = {}, []
        for i, label in enumerate(files["sent"]):
            if seen.get(label, 0) < k:
                seen[label] = seen.get(label, 0) + 1
                rows.append(i)
        for ext, lines in files.items():
            with open(os.path.join(root, f"train.k{k}.{ext}"), "w") as f:
                f.write("".join(lines[i] + "\n" for i in rows))
        with open(os.path.join(root, f"train.k{k}.tsv"), "w") as f:
            f.write(tsv[0] + "\n" + "".join(tsv[i + 1] + "\n" for i in rows))
    return root


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_report_over_real_fewshot_runs(tmp_path_factory, corpus_dir, imported_init, tmp_path):
    init = shared_transfer(tmp_path_factory, imported_init, corpus_dir)
    data = fewshot_corpus(corpus_dir, tmp_path / "data")
    runs = tmp_path / "runs"
    runs.mkdir()
    hydra_train("t2c_demo", str(runs / "k4"), f"task.data={data}", "dataset.train_subset=train.k4",
                "optimization.max_update=16", f"checkpoint.finetune_from_model={init}")
    full = t2c_from_s2c(tmp_path_factory, imported_init, corpus_dir)  # the same recipe on the whole train split
    evals = tmp_path / "evals"
    for task in ("t2c", "s2c"):  # same modality and zero-shot on speech
        evaluate_checkpoint(EvalConfig(checkpoint=str(full / "checkpoints" / "checkpoint_best.pt"), task=task, data=corpus_dir,
                            split="valid", out_dir=str(evals / f"full_on_{task}")))
    evaluate_checkpoint(EvalConfig(checkpoint=init, task="t2c", data=corpus_dir, split="valid", out_dir=str(evals / "zero_shot"),
                        legacy_metrics=True))

    out = tmp_path / "report"
    proc = run_cli(["xmodal-report", str(runs / "k4"), str(full), str(evals), "--out", str(out)])
    assert "3 evaluations in 3 conditions, 2 training runs" in proc.stdout
    for png in ("loss.png", "valid_f1.png", "f1_vs_shots.png", "confusion_full_on_t2c.png",
                "confusion_full_on_s2c.png", "confusion_zero_shot.png"):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC, png

    results = {r["name"]: r for r in read_csv(out / "results.csv")}
    assert set(results) == {"full_on_t2c", "full_on_s2c", "zero_shot"}
    r = results["full_on_s2c"]
    assert (r["init"], r["data_variant"], r["model_task"], r["task"], r["cross_modal"]) == (
        "transfer s2c->t2c of s2c_init.pt", "train", "t2c", "s2c", "yes")
    z = results["zero_shot"]
    assert (z["data_variant"], z["metrics"], z["model_task"]) == ("none (transferred)", "legacy", "t2c")
    for row in results.values():
        assert all(0 <= float(row[k]) <= 100 for k in ("accuracy", "precision", "recall", "f1"))

    learning = {r["run"]: r for r in read_csv(out / "learning.csv")}
    assert set(learning) == {"k4", "t2c_from_s2c"}
    k4 = learning["k4"]
    assert (k4["shots"], k4["train_subset"], k4["num_updates"]) == ("4", "train.k4", "16")
    assert learning["k4"]["init"] == learning["t2c_from_s2c"]["init"] == "transfer s2c->t2c of s2c_init.pt"
    assert learning["t2c_from_s2c"]["shots"] == "" and learning["t2c_from_s2c"]["num_updates"] == "60"
    # Our evaluator on checkpoint_best reproduces fairseq's own best validation macro-F1 (same rows, no crops).
    best = float(learning["t2c_from_s2c"]["best_valid_macro_f1"])
    assert abs(float(results["full_on_t2c"]["f1"]) - 100 * best) < 0.01
    # Learning speed agrees with the run's own log lines.
    speed = learning_speed(parse_training_log(str(runs / "k4" / "hydra_train.log")))
    valid_lines = [l for l in (runs / "k4" / "hydra_train.log").read_text().splitlines() if "][valid][" in l]
    assert len(speed["curve"]) == len(valid_lines) == 8  # 12 rows, batch 8: 2 updates per epoch
    assert [c["num_updates"] for c in speed["curve"]] == list(range(2, 17, 2))

    md = (out / "report.md").read_text()
    for name in ("full_on_t2c", "full_on_s2c", "zero_shot", "k4", "t2c_from_s2c", "f1_vs_shots.png"):
        assert name in md


def test_report_over_real_seeds_bands_error_bars_and_summed_confusion(tmp_path_factory, corpus_dir, imported_init,
                                                                       tmp_path):
    """Two seeds of one real few-shot recipe: one condition with n=2 in every table, a band, error bars, a confusion
    matrix summed over the seeds; and a figure that cannot be drawn is reported with its reason."""
    from fairseq_xmodal.evaluation.plots import mean_band

    init = shared_transfer(tmp_path_factory, imported_init, corpus_dir)
    data = fewshot_corpus(corpus_dir, tmp_path / "data")
    for seed in (1, 2):
        run = tmp_path / "runs" / f"seed{seed}" / "k4"
        run.parent.mkdir(parents=True)
        hydra_train("t2c_demo", str(run), f"task.data={data}", "dataset.train_subset=train.k4", f"common.seed={seed}",
                    "optimization.max_update=12", f"checkpoint.finetune_from_model={init}",
                    "optimization.lr=[3e-3]")
        evaluate_checkpoint(EvalConfig(checkpoint=str(run / "checkpoints" / "checkpoint_best.pt"), task="t2c", data=data,
                            split="valid", out_dir=str(tmp_path / "evals" / f"seed{seed}" / "k4")))
    out = tmp_path / "report"
    proc = run_cli(["xmodal-report", str(tmp_path / "runs"), str(tmp_path / "evals"), "--out", str(out)])
    assert "2 evaluations in 1 conditions, 2 training runs" in proc.stdout
    groups = read_csv(out / "seed_groups.csv")
    assert len(groups) == 1 and (groups[0]["condition"], groups[0]["n"], groups[0]["seeds"]) == ("k4", "2", "1,2")
    assert groups[0]["interval"] == "t over 2 seeds" and groups[0]["majority_f1"]
    learning = read_csv(out / "learning_groups.csv")
    assert len(learning) == 1 and learning[0]["n"] == "2"
    comps = read_csv(out / "comparisons.csv")
    assert [(c["a"], c["b"], c["test"]) for c in comps] == [("k4", "majority", "one-sample t-test over 2 seeds")]
    for png in ("loss.png", "valid_f1.png", "f1_vs_shots.png", "confusion_k4.png"):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC, png
    # the band drawn in valid_f1.png: the seeds differ at some epoch, so the interval there has width
    curves = [parse_training_log(str(tmp_path / "runs" / f"seed{s}" / "k4" / "hydra_train.log")) for s in (1, 2)]
    _, mean, lo, hi = mean_band([learning_speed(c)["curve"] for c in curves], "valid_loss")
    assert (hi - lo).max() > 0 and ((lo <= mean) & (mean <= hi)).all()
    md = (out / "report.md").read_text()
    assert "## Conditions over seeds" in md and "## Comparisons" in md

    only_transferred = tmp_path / "report2"
    evaluate_checkpoint(EvalConfig(checkpoint=init, task="t2c", data=data, split="valid", out_dir=str(tmp_path / "z" / "zs")))
    proc = run_cli(["xmodal-report", str(tmp_path / "z"), "--out", str(only_transferred)])
    assert "not drawn: f1_vs_shots.png: no training run or evaluation is on a k-shot split" in proc.stdout
    assert "f1_vs_shots.png" in (only_transferred / "report.md").read_text().split("## Figures not drawn")[1]
