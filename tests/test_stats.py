"""Statistics with known truth, through the commands' own code paths: bootstrap intervals of xmodal-evaluate cover a
known macro-F1 at about their level, xmodal-report declares simulated real differences different and null pairs at
about the nominal rate, and seed groups aggregate known metrics exactly (n, mean, std, t-interval)."""
import csv
import json
import os

import numpy as np
import pytest
from scipy import stats as st

from conftest import run_cli
from fairseq_xmodal.evaluation import seeds, stats
from fairseq_xmodal.evaluation.evaluate import FORMAT, Predictions, compute_metrics, write_predictions

LABELS = ["Negative", "Neutral", "Positive"]
GOLD_P = [0.1, 0.7, 0.2]  # Neutral-heavy, as SLUE


def simulate(rng, n, accuracy, gold=None):
    """gold ~ GOLD_P; a prediction is right with probability `accuracy`, else a uniformly chosen wrong label."""
    gold = rng.choice(3, size=n, p=GOLD_P) if gold is None else gold
    wrong = (gold + rng.integers(1, 3, size=n)) % 3
    return gold, np.where(rng.random(n) < accuracy, gold, wrong)


def write_eval(out_dir, gold, pred, seed=None, split="dev", task="t2c", resamples=200):
    """An xmodal-evaluate output folder (metrics.json computed by xmodal-evaluate's own code, predictions.tsv)."""
    os.makedirs(out_dir, exist_ok=True)
    probs = np.eye(3)[pred]
    p = Predictions([f"u{i:04d}" for i in range(len(gold))], [int(g) for g in gold], [int(x) for x in pred], probs)
    m = {"format": FORMAT, "checkpoint": {"task": task, "kind": "trained", "init": "official speecht5_base.pt",
                                          "train_subset": "train", "seed": seed},
         "task": task, "cross_modal": False, "split": split, "rows": len(gold),
         **compute_metrics(p, LABELS, resamples=resamples)}
    write_predictions(os.path.join(out_dir, "predictions.tsv"), p, LABELS)
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(m, f)
    return m


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def true_macro_f1(accuracy):
    """Population macro-F1 of `simulate` (expected confusion matrix)."""
    p = np.array(GOLD_P)
    cm = np.diag(p * accuracy) + (p * (1 - accuracy) / 2)[:, None] * (1 - np.eye(3))
    tp, prec_d, rec_d = np.diag(cm), cm.sum(0), cm.sum(1)
    prec, rec = tp / prec_d, tp / rec_d
    return 100 * float(np.mean(2 * prec * rec / (prec + rec)))


def test_bootstrap_intervals_cover_the_true_macro_f1():
    rng = np.random.default_rng(7)
    truth, hits, draws = true_macro_f1(0.7), 0, 200
    for d in range(draws):
        gold, pred = simulate(rng, 400, 0.7)
        m = compute_metrics(Predictions([str(i) for i in range(400)], gold.tolist(), pred.tolist(), np.eye(3)[pred]),
                            LABELS, resamples=1000, seed=d)
        lo, hi = m["ci"]["macro_f1"]
        hits += lo <= truth <= hi
        assert m["ci_level"] == 0.95 and m["bootstrap"]["resamples"] == 1000 and m["bootstrap"]["seed"] == d
    assert 0.90 <= hits / draws <= 0.99, hits / draws


def test_metrics_json_has_intervals_and_baselines(tmp_path):
    rng = np.random.default_rng(0)
    gold, pred = simulate(rng, 300, 0.8)
    m = write_eval(str(tmp_path / "e"), gold, pred)
    for k in ("accuracy", "macro_precision", "macro_recall", "macro_f1", "f1_Negative", "f1_Neutral", "f1_Positive"):
        lo, hi = m["ci"][k]
        point = m[k] if k in m else m["slue"][k]
        assert lo <= point <= hi, k
    maj = m["baselines"]["majority"]
    n_neutral = int((gold == 1).sum())
    assert maj["label"] == "Neutral" and maj["accuracy"] == pytest.approx(100 * n_neutral / 300)
    assert maj["macro_f1"] == pytest.approx(100 * (2 * n_neutral / (n_neutral + 300)) / 3)
    strat = m["baselines"]["stratified_random"]
    # expected macro-F1 of random labels drawn with the gold frequencies = mean of the class frequencies (x100/3)
    assert strat["macro_f1"] == pytest.approx(100 * np.mean(np.bincount(gold) / 300), abs=1.5)
    assert strat["ci"]["macro_f1"][0] < strat["macro_f1"] < strat["ci"]["macro_f1"][1] < m["ci"]["macro_f1"][0]


def test_report_detects_a_real_difference_and_says_so(tmp_path):
    rng = np.random.default_rng(1)
    gold, good = simulate(rng, 300, 0.8)
    _, bad = simulate(rng, 300, 0.6, gold)
    write_eval(str(tmp_path / "ev" / "good"), gold, good, seed=1)
    write_eval(str(tmp_path / "ev" / "bad"), gold, bad, seed=1)
    proc = run_cli(["xmodal-report", str(tmp_path / "ev"), "--out", str(tmp_path / "rep"), "--compare", "good=bad",
                    "--no-plots"])
    comps = {(r["a"], r["b"]): r for r in read_csv(tmp_path / "rep" / "comparisons.csv")}
    c = comps[("good", "bad")]
    assert float(c["p_value"]) < 0.01 and c["verdict"].startswith("good better")
    assert "approximate randomisation" in c["test"] and float(c["diff_lo"]) > 0
    assert comps[("bad", "majority")]["verdict"].startswith("bad better")
    assert "good better" in proc.stdout


def test_null_pairs_are_declared_different_at_about_the_nominal_rate(tmp_path):
    """200 pairs of exchangeable predictors on the same 120 utterances, one xmodal-report run."""
    rng = np.random.default_rng(2)
    pairs = []
    for i in range(200):
        gold, a = simulate(rng, 120, 0.7)
        _, b = simulate(rng, 120, 0.7, gold)
        write_eval(str(tmp_path / "ev" / f"p{i:03d}_a"), gold, a, resamples=20)
        write_eval(str(tmp_path / "ev" / f"p{i:03d}_b"), gold, b, resamples=20)
        pairs += ["--compare", f"p{i:03d}_a=p{i:03d}_b"]
    run_cli(["xmodal-report", str(tmp_path / "ev"), "--out", str(tmp_path / "rep"), "--no-plots",
             "--permutations", "999", *pairs])
    rows = [r for r in read_csv(tmp_path / "rep" / "comparisons.csv") if r["b"] != "majority"]
    assert len(rows) == 200
    rate = np.mean([float(r["p_value"]) < 0.05 for r in rows])
    assert 0.02 <= rate <= 0.09, rate
    assert all(r["verdict"] in ("no detectable difference at alpha=0.05",) or "better" in r["verdict"] for r in rows)


def test_seed_groups_aggregate_known_metrics_and_t_test_over_seeds(tmp_path):
    rng = np.random.default_rng(3)
    gold = rng.choice(3, size=200, p=GOLD_P)
    f1 = {"hi": {}, "lo": {}}
    for s in (1, 2, 3):
        for cond, acc in (("hi", 0.85), ("lo", 0.55)):
            _, pred = simulate(rng, 200, acc, gold)
            f1[cond][s] = write_eval(str(tmp_path / "ev" / f"seed{s}" / cond), gold, pred, seed=s)["macro_f1"]
    write_eval(str(tmp_path / "ev" / "single"), gold, simulate(rng, 200, 0.7, gold)[1], seed=9)
    proc = run_cli(["xmodal-report", str(tmp_path / "ev"), "--out", str(tmp_path / "rep"), "--compare", "hi=lo",
                    "--no-plots"])
    groups = {r["condition"]: r for r in read_csv(tmp_path / "rep" / "seed_groups.csv")}
    assert set(groups) == {"hi", "lo", "single"}
    v = np.array([f1["hi"][s] for s in (1, 2, 3)])
    g = groups["hi"]
    half = st.t.ppf(0.975, 2) * v.std(ddof=1) / np.sqrt(3)
    assert (int(g["n"]), g["seeds"], g["interval"]) == (3, "1,2,3", "t over 3 seeds")
    assert float(g["f1"]) == pytest.approx(v.mean()) and float(g["f1_std"]) == pytest.approx(v.std(ddof=1))
    assert float(g["f1_lo"]) == pytest.approx(v.mean() - half) and float(g["f1_hi"]) == pytest.approx(v.mean() + half)
    single = groups["single"]  # one seed keeps its bootstrap interval
    assert int(single["n"]) == 1 and single["interval"] == "bootstrap over utterances" and single["f1_std"] == ""
    assert float(single["f1_lo"]) < float(single["f1"]) < float(single["f1_hi"])
    comps = {(r["a"], r["b"]): r for r in read_csv(tmp_path / "rep" / "comparisons.csv")}
    c = comps[("hi", "lo")]
    assert c["test"] == "paired t-test over 3 seeds" and c["verdict"].startswith("hi better")
    d = v - np.array([f1["lo"][s] for s in (1, 2, 3)])
    assert float(c["p_value"]) == pytest.approx(st.ttest_rel(v, v - d).pvalue)
    maj = comps[("hi", "majority")]  # one split, one baseline value: a one-sample t-test against it
    assert maj["test"] == "one-sample t-test over 3 seeds" and maj["verdict"].startswith("hi better")
    assert float(maj["p_value"]) == pytest.approx(st.ttest_1samp(v, float(maj["b_value"])).pvalue)
    assert float(maj["difference"]) == pytest.approx(v.mean() - float(maj["b_value"]))
    assert "| hi |" in proc.stdout and "n " in proc.stdout or "| n |" in proc.stdout


def test_welch_and_null_rate_over_seeds():
    rng = np.random.default_rng(4)
    hits = 0
    for _ in range(400):
        a = {f"a{i}": x for i, x in enumerate(rng.normal(50, 2, 3))}
        b = {f"b{i}": x for i, x in enumerate(rng.normal(50, 2, 4))}
        r = stats.seed_test(a, b)
        assert r["test"].startswith("Welch")
        hits += r["p_value"] < 0.05
    assert 0.02 <= hits / 400 <= 0.09
    big = stats.seed_test({1: 60.0, 2: 61.0, 3: 59.5}, {1: 50.0, 2: 50.5, 3: 49.0})
    assert big["p_value"] < 0.01 and stats.verdict(big, "A", "B") .startswith("A better")


def test_seed_names_and_power_table():
    assert [seeds.strip_seed(n) for n in ("seed2/t2c_k8", "t2c_k8_seed2", "t2c_k8.seed=2", "runs/seed12/x")] == [
        "t2c_k8", "t2c_k8", "t2c_k8", "runs/x"]
    assert seeds.seed_in("a/seed12/x") == 12 and seeds.seed_in("seedless") is None
    # 5 points at seed std 2: a handful of seeds; 1 point at std 4: hundreds
    assert 3 <= stats.seeds_needed(5, 2) <= 6 and stats.seeds_needed(1, 4) > 100
    assert stats.t_test_power(5, 2, stats.seeds_needed(5, 2)) >= 0.8


def test_power_command():
    proc = run_cli(["xmodal-report", "--power"])
    assert "sigma=2" in proc.stdout and "dev_utterances" in proc.stdout


def fake_job(job_dir, overrides, best_f1):
    """A finished sweep job folder as Hydra and fairseq leave it, with a known best validation macro-F1."""
    os.makedirs(os.path.join(job_dir, ".hydra"))
    with open(os.path.join(job_dir, ".hydra", "overrides.yaml"), "w") as f:
        f.write("".join(f"- {o}\n" for o in overrides))
    with open(os.path.join(job_dir, ".hydra", "config.yaml"), "w") as f:
        f.write("checkpoint:\n  best_checkpoint_metric: macro_f1\n  maximize_best_checkpoint_metric: true\n"
                "dataset:\n  valid_subset: valid\noptimization:\n  max_update: 20\n")
    with open(os.path.join(job_dir, "hydra_train.log"), "w") as f:
        for upd, f1 in ((10, best_f1 - 0.05), (20, best_f1)):
            f.write(f"[2026-01-01 10:00:{upd:02d},000][valid][INFO] - epoch 00{upd // 10} | valid on 'valid' subset | "
                    f"loss 1.0 | accuracy 0.5 | macro_f1 {f1:.4f} | num_updates {upd}\n")
    open(os.path.join(job_dir, "DONE"), "w").close()


def test_sweep_table_seed_groups_and_sweep_comparisons(tmp_path):
    known = {("trained", 1): 0.60, ("trained", 2): 0.62, ("trained", 3): 0.61,
             ("frozen", 1): 0.40, ("frozen", 2): 0.43, ("frozen", 3): 0.41}
    for (mode, seed), f1 in known.items():
        fake_job(str(tmp_path / "sw" / f"{mode}_{seed}"), [f"sweep/transplanted={mode}", f"common.seed={seed}"], f1)
    proc = run_cli(["xmodal-sweep-table", str(tmp_path / "sw"), "--groups-csv", str(tmp_path / "g.csv")])
    groups = {r["condition"]: r for r in read_csv(tmp_path / "g.csv")}
    v = np.array([0.60, 0.62, 0.61])
    g = groups["sweep/transplanted=trained"]
    assert (int(g["n"]), g["seeds"]) == (3, "1,2,3")
    assert float(g["best_macro_f1"]) == pytest.approx(v.mean(), abs=1e-6)
    assert float(g["best_macro_f1_std"]) == pytest.approx(v.std(ddof=1), abs=1e-6)
    half = st.t.ppf(0.975, 2) * v.std(ddof=1) / np.sqrt(3)
    assert float(g["best_macro_f1_lo"]) == pytest.approx(v.mean() - half, abs=1e-6)
    assert "Seed groups (common.seed" in proc.stdout and "| condition | n | seeds |" in proc.stdout
    line = next(l for l in proc.stdout.splitlines() if "paired t-test over 3 seeds" in l)
    assert "sweep/transplanted=trained better" in line or "sweep/transplanted=frozen better" in line


def test_sweep_pairs_transplanted_against_controls_and_two_valued_axes():
    from fairseq_xmodal.cli.sweep_table import sweep_pairs

    conds = [f"checkpoint.finetune_from_model=/t/{s}.{i}.pt model.embedder_warmup_updates={w}"
             for s in ("first", "last") for i in ("transferred", "xavier_uniform") for w in (0, 1000)]
    groups = [seeds.Group((c,), c) for c in conds]
    pairs = {(a.condition, b.condition) for a, b in sweep_pairs(groups)}
    for s in ("first", "last"):
        for w in (0, 1000):
            assert (f"checkpoint.finetune_from_model=/t/{s}.transferred.pt model.embedder_warmup_updates={w}",
                    f"checkpoint.finetune_from_model=/t/{s}.xavier_uniform.pt model.embedder_warmup_updates={w}") in pairs
    assert len(pairs) == 4 + 4  # 4 transplanted-vs-control pairs, 4 warm-up on/off pairs; never first vs last
    assert not any("first" in a and "last" in b for a, b in pairs)


def test_single_seed_sweep_pair_says_why_it_is_not_tested():
    """A sweep table has training logs only: a one-seed pair gets a reason a user can act on, not a TypeError."""
    a, b = seeds.Group(("x=1",), "x=1"), seeds.Group(("x=2",), "x=2")
    a.rows, a.seeds, b.rows, b.seeds = [{"f1": 60.0}], [1], [{"f1": 50.0}], [1]
    row = seeds.compare(a, b, "f1", b.condition)
    assert row["verdict"] == "cannot compare" and row["test"].startswith("not tested: one seed per condition")
    assert "run >= 2 seeds" in row["test"] and "NoneType" not in row["test"]


def test_bad_interval_options_are_one_line_errors(tmp_path):
    proc = run_cli(["xmodal-evaluate", "--checkpoint", str(tmp_path / "x.pt"), "--task", "t2c", "--data",
                    str(tmp_path), "--out", str(tmp_path / "e"), "--ci-level", "1.5"], check=False)
    assert proc.returncode == 2 and "--ci-level must be in (0, 1)" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli(["xmodal-report", str(tmp_path), "--out", str(tmp_path / "r"), "--compare", "a-b"], check=False)
    assert proc.returncode == 2 and "write CONDITION_A=CONDITION_B" in proc.stderr
