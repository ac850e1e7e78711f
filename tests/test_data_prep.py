"""xmodal-prepare-slue on SLUE-format folders built on the fly (real tsv and FLAC files, nothing mocked)."""
import hashlib
import json
import os
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from data_prep import slue_output
from data_prep import slue_voxceleb as sv
from data_prep.slue_rows import DataPrepError, filter_labels
from data_prep.slue_splits import balance, carve_valid, few_shot
from data_prep.slue_voxceleb import prepare

SR = 16000
COLUMNS = ["id", "normalized_text", "speaker_id", "split", "sentiment", "start_second", "end_second"]
BLIND_COLUMNS = ["id", "speaker_id", "split", "start_second", "end_second"]
# Real SLUE-VoxCeleb v0.2 label counts (prior_system.md §5.3, slue.md §2).
REAL_FT = {"Positive": 1279, "Negative": 227, "Neutral": 4223, "<mixed>": 48}
REAL_DEV = {"Positive": 262, "Negative": 51, "Neutral": 1124, "<mixed>": 3, "Disagreement": 14}


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    from fairseq_xmodal.text_vocab import make_char_vocab

    return make_char_vocab(str(tmp_path_factory.mktemp("vocab")))


def table(counts, split="fine-tune", seed=0):
    """A SLUE table with the given label counts, rows in a seeded shuffled order."""
    labels = [lab for lab, n in counts.items() for _ in range(n)]
    labels = [labels[i] for i in np.random.default_rng(seed).permutation(len(labels))]
    return pd.DataFrame({"id": [f"id1{i:04d}_{split}_{i:05d}" for i in range(len(labels))],
                         "sentiment": labels, "line": np.arange(2, len(labels) + 2)})


def make_rows(split, labels, start_index=0):
    rows = []
    for i, lab in enumerate(labels):
        start = 0.05 + 0.013 * (i % 7)
        rows.append({"id": f"id1{i % 3:04d}_vid{split}_{start_index + i:05d}",
                     "normalized_text": f"words of {lab.lower()} {i}", "speaker_id": f"id1{i % 3:04d}",
                     "split": split, "sentiment": lab,
                     "start_second": f"{start:.3f}", "end_second": f"{start + 0.2 + 0.017 * (i % 5):.3f}"})
    return rows


def write_folder(root, splits, *, columns=None, audio=True):
    """SLUE layout: slue-voxceleb_<split>.tsv + <split>_raw/<id>.flac (raw clip = segment end + 0.1 s of signal)."""
    os.makedirs(root, exist_ok=True)
    for split, rows in splits.items():
        cols = (columns or {}).get(split) or (BLIND_COLUMNS if split == "test" else COLUMNS)
        name = "slue-voxceleb_test_blind.tsv" if split == "test" else f"slue-voxceleb_{split}.tsv"
        with open(os.path.join(root, name), "w") as f:
            f.write("\t".join(cols) + "\n")
            for r in rows:
                f.write("\t".join(str(r.get(c, "")) for c in cols) + "\n")
        if audio:
            os.makedirs(os.path.join(root, f"{split}_raw"), exist_ok=True)
            for k, r in enumerate(rows):
                n = int((float(r["end_second"]) + 0.1) * SR)
                x = (0.3 * np.sin(2 * np.pi * (200 + 10 * k) * np.arange(n) / SR) * 32767).astype(np.int16)
                sf.write(os.path.join(root, f"{split}_raw", f"{r['id']}.flac"), x, SR, subtype="PCM_16")
    return root


SMALL = {
    "fine-tune": ["Neutral"] * 10 + ["Positive"] * 5 + ["Negative"] * 3 + ["<mixed>"],
    "dev": ["Neutral"] * 4 + ["Positive", "Negative", "Disagreement"],
    "test": ["Neutral"] * 4,
}


@pytest.fixture
def small(tmp_path):
    """~30 utterances: fine-tune 19 (1 <mixed>), dev 7 (1 Disagreement), blind test 4."""
    splits, start = {}, 0
    for split, labels in SMALL.items():
        splits[split] = make_rows(split, labels, start)
        start += len(labels)
    write_folder(str(tmp_path / "slue"), splits)
    return tmp_path, splits


def run(tmp_path, vocab, out="data", **kw):
    kw.setdefault("workers", 1)
    kw.setdefault("log", lambda s: None)
    return prepare(str(tmp_path / "slue"), str(tmp_path / out), vocab[0], vocab[1], **kw)


def lines(path):
    with open(path) as f:
        return f.read().splitlines()


# ---- label logic on the real SLUE counts -----------------------------------------------------------------------

def test_real_counts_filter_balance_few_shot():
    ft, dropped = filter_labels(table(REAL_FT))
    assert len(ft) == 5729 and dropped == {"<mixed>": 48}
    dev, dropped_dev = filter_labels(table(REAL_DEV, "dev"))
    assert len(dev) == 1437 and dropped_dev == {"<mixed>": 3, "Disagreement": 14}
    assert Counter(dev.sentiment) == {"Positive": 262, "Negative": 51, "Neutral": 1124}

    pruned = balance(ft, "prune", seed=1)
    assert Counter(pruned.sentiment) == {"Positive": 227, "Negative": 227, "Neutral": 227}
    assert pruned.id.is_unique and set(pruned.id) <= set(ft.id)
    floor = balance(ft, "dup_floor", seed=1)
    assert Counter(floor.sentiment) == {"Positive": 3837, "Negative": 4086, "Neutral": 4223} and len(floor) == 12146
    assert set(Counter(floor.id).values()) == {1, 3, 18}
    equal = balance(ft, "dup_equal", seed=1)
    assert Counter(equal.sentiment) == {"Positive": 4223, "Negative": 4223, "Neutral": 4223}
    copies = Counter(equal.id)
    assert {copies[u] for u in ft.id[ft.sentiment == "Negative"]} == {18, 19}  # 4223 = 18*227 + 137
    assert sum(copies[u] == 19 for u in ft.id[ft.sentiment == "Negative"]) == 137

    shots = few_shot(ft, [16, 4, 8], seed=1)
    assert list(shots) == [4, 8, 16]
    for k, sub in shots.items():
        assert Counter(sub.sentiment) == {"Positive": k, "Negative": k, "Neutral": k}
    assert set(shots[4].id) < set(shots[8].id) < set(shots[16].id)

    # Same seed => same rows; another seed => other rows. Row order is the input order.
    assert balance(ft, "prune", 1).id.tolist() == pruned.id.tolist()
    assert balance(ft, "prune", 2).id.tolist() != pruned.id.tolist()
    assert balance(ft, "dup_equal", 1).id.tolist() == equal.id.tolist()
    assert balance(ft, "dup_equal", 2).id.tolist() != equal.id.tolist()
    assert few_shot(ft, [8], 1)[8].id.tolist() == shots[8].id.tolist()
    assert few_shot(ft, [8], 2)[8].id.tolist() != shots[8].id.tolist()
    pos = {u: i for i, u in enumerate(ft.id)}
    assert all(np.diff([pos[u] for u in pruned.id]) > 0)

    train, valid = carve_valid(ft, 0.1, seed=1)
    assert Counter(valid.sentiment) == {"Positive": 128, "Negative": 23, "Neutral": 422}
    assert len(train) + len(valid) == 5729 and not set(train.id) & set(valid.id)
    assert carve_valid(ft, 0.1, seed=2)[1].id.tolist() != valid.id.tolist()
    with pytest.raises(DataPrepError, match="k=300"):
        few_shot(ft, [300], 1)


def test_unknown_label_is_an_error_naming_file_and_row():
    df = table({"Neutral": 3, "Angry": 1})
    line = int(df.line[df.sentiment == "Angry"].iloc[0])
    with pytest.raises(DataPrepError, match=rf"ft\.tsv, line {line}: .*'Angry'.*\n  fix: --keep-label"):
        filter_labels(df, file="ft.tsv")
    kept, dropped = filter_labels(df, ["Angry", "Neutral"], [])
    assert len(kept) == 4 and dropped == {}


def test_real_counts_end_to_end_with_segmented_dir(tmp_path, vocab):
    """The real label counts through the whole CLI, on 7231 tiny pre-segmented files."""
    slue, seg = tmp_path / "slue", tmp_path / "seg"
    x = np.zeros(16, dtype=np.int16)
    splits = {"fine-tune": table(REAL_FT, "fine-tune"), "dev": table(REAL_DEV, "dev", seed=1)}
    for split, df in splits.items():
        os.makedirs(seg / split)
        rows = [{"id": u, "normalized_text": "a b", "speaker_id": "s", "split": split, "sentiment": lab,
                 "start_second": "0.5", "end_second": "0.501"} for u, lab in zip(df.id, df.sentiment)]
        write_folder(str(slue), {split: rows}, audio=False)
        for u in df.id:
            sf.write(str(seg / split / f"{u}.flac"), x, SR, subtype="PCM_16")
    out = tmp_path / "data"
    rc = sv.main(["--slue-dir", str(slue), "--out", str(out), "--spm", vocab[0], "--dict", vocab[1],
                  "--segmented-dir", str(seg), "--balance", "prune,dup_floor", "--balance", "dup_equal",
                  "--few-shot", "4,8", "--workers", "2"])
    assert rc == 0
    report = json.loads((out / "prep_report.json").read_text())
    counts = {name: s["counts"] for name, s in report["splits"].items()}
    assert counts["fine-tune"] == {"Negative": 227, "Neutral": 4223, "Positive": 1279}
    assert counts["dev"] == {"Negative": 51, "Neutral": 1124, "Positive": 262}
    assert counts["fine-tune.prune"] == {"Negative": 227, "Neutral": 227, "Positive": 227}
    assert counts["fine-tune.dup_floor"] == {"Negative": 4086, "Neutral": 4223, "Positive": 3837}
    assert counts["fine-tune.dup_equal"] == {"Negative": 4223, "Neutral": 4223, "Positive": 4223}
    assert report["dropped"] == {"fine-tune": {"<mixed>": 48}, "dev": {"<mixed>": 3, "Disagreement": 14}}
    assert "no test tsv" in report["warnings"][0]
    tsv = lines(out / "fine-tune.dup_floor.tsv")
    assert tsv[0] == str(seg / "fine-tune") and len(tsv) == 12147 and tsv[1].endswith("\t16")
    assert not (out / "audio").exists()  # pre-segmented audio is used in place
    assert lines(out / "fine-tune.k4.id") == report["splits"]["fine-tune.k4"]["ids"]


# ---- end to end on a small folder ------------------------------------------------------------------------------

def test_prepare_small_folder(small, vocab):
    tmp_path, rows = small
    report = run(tmp_path, vocab, valid_from_fine_tune=0.25, balance_methods=["prune", "dup_equal"],
                 few_shot_ks=[1, 2], seed=7, workers=2)
    out = tmp_path / "data"
    assert lines(out / "labels.sent.txt") == ["Negative", "Neutral", "Positive"]
    assert (out / "dict.txt").read_bytes() == open(vocab[1], "rb").read()
    assert (out / "spm_char.model").read_bytes() == open(vocab[0], "rb").read()
    by_id = {r["id"]: r for split in rows.values() for r in split}
    expected_splits = {"train", "valid", "dev", "test", "train.prune", "train.dup_equal", "train.k1", "train.k2"}
    assert set(report["splits"]) == expected_splits
    for name in expected_splits:
        ids = lines(out / f"{name}.id")
        tsv = lines(out / f"{name}.tsv")
        source = "test" if name == "test" else "dev" if name == "dev" else "fine-tune"
        assert tsv[0] == f"audio/{source}"  # relative root: the folder can move
        assert [ln.split("\t")[0] for ln in tsv[1:]] == [f"{u}.flac" for u in ids]
        if name == "test":  # blind test: no transcript, no label
            assert not (out / "test.wrd").exists() and not (out / "test.sent").exists()
        else:
            assert lines(out / f"{name}.wrd") == [by_id[u]["normalized_text"] for u in ids]
            assert lines(out / f"{name}.sent") == [by_id[u]["sentiment"] for u in ids]
        for ln in tsv[1:]:
            rel, n = ln.split("\t")
            r = by_id[rel[:-5]]
            a, b = int(float(r["start_second"]) * SR), int(float(r["end_second"]) * SR)
            info = sf.info(str(out / tsv[0] / rel))
            assert int(n) == info.frames == b - a and info.samplerate == SR and info.channels == 1
    # The cut is bit-exact: the written clip is the raw clip's samples [a, b).
    r = rows["dev"][2]
    raw, _ = sf.read(str(tmp_path / "slue" / "dev_raw" / f"{r['id']}.flac"), dtype="int16")
    seg, _ = sf.read(str(out / "audio" / "dev" / f"{r['id']}.flac"), dtype="int16")
    assert np.array_equal(seg, raw[int(float(r["start_second"]) * SR): int(float(r["end_second"]) * SR)])
    # Filtering and carving: <mixed> and Disagreement gone, dev untouched, valid stratified and disjoint.
    assert lines(out / "dev.id") == [r["id"] for r in rows["dev"] if r["sentiment"] != "Disagreement"]
    train, valid = set(lines(out / "train.id")), set(lines(out / "valid.id"))
    assert not train & valid and len(train | valid) == 18
    assert Counter(lines(out / "valid.sent")) == {"Neutral": 3, "Positive": 1, "Negative": 1}  # floor(0.25n+0.5)
    assert sorted(os.listdir(out / "audio" / "fine-tune")) == sorted(f"{u}.flac" for u in train | valid)
    # Report: seed, options, checksums, counts of every step, ids of the derived splits.
    assert report == json.loads((out / "prep_report.json").read_text())
    assert report["seed"] == 7 and report["options"]["valid_from_fine_tune"] == 0.25
    tsv_path = tmp_path / "slue" / "slue-voxceleb_fine-tune.tsv"
    sha = hashlib.sha256(tsv_path.read_bytes()).hexdigest()
    assert report["inputs"]["slue-voxceleb_fine-tune.tsv"]["sha256"] == sha
    assert report["dropped"] == {"fine-tune": {"<mixed>": 1}, "dev": {"Disagreement": 1}}
    stages = {(s["split"], s["stage"]): s for s in report["steps"]}
    assert stages[("fine-tune", "raw")]["total"] == 19 and stages[("fine-tune", "labels filtered")]["total"] == 18
    assert stages[("train.prune", "balanced")]["counts"] == {"Negative": 2, "Neutral": 2, "Positive": 2}
    assert stages[("train.dup_equal", "balanced")]["counts"] == {"Negative": 7, "Neutral": 7, "Positive": 7}
    assert report["splits"]["valid"]["ids"] == lines(out / "valid.id")
    assert report["splits"]["train.k2"]["ids"] == lines(out / "train.k2.id")
    assert set(report["splits"]["train.k1"]["ids"]) < set(report["splits"]["train.k2"]["ids"])
    assert not any(p.name.startswith("data.") for p in tmp_path.iterdir())  # no temp folder left


def test_prepare_is_deterministic_per_seed(small, vocab):
    tmp_path, _ = small
    kw = dict(valid_from_fine_tune=0.3, balance_methods=["prune", "dup_equal"], few_shot_ks=[2])
    a, b, c = (run(tmp_path, vocab, out=o, seed=s, **kw) for o, s in (("a", 1), ("b", 1), ("c", 2)))
    for name in a["splits"]:
        assert lines(tmp_path / "a" / f"{name}.id") == lines(tmp_path / "b" / f"{name}.id")
    assert a["splits"]["valid"]["ids"] != c["splits"]["valid"]["ids"]
    assert (tmp_path / "a" / "audio" / "dev" / "id10001_viddev_00020.flac").read_bytes() == \
        (tmp_path / "b" / "audio" / "dev" / "id10001_viddev_00020.flac").read_bytes()


def test_keep_and_drop_labels(small, vocab):
    tmp_path, _ = small
    report = run(tmp_path, vocab, keep_labels=["Disagreement"], drop_labels=["<mixed>", "Negative"])
    out = tmp_path / "data"
    assert lines(out / "labels.sent.txt") == ["Disagreement", "Neutral", "Positive"]
    assert Counter(lines(out / "dev.sent")) == {"Neutral": 4, "Positive": 1, "Disagreement": 1}
    assert report["dropped"]["fine-tune"] == {"<mixed>": 1, "Negative": 3}
    with pytest.raises(DataPrepError, match="both --keep-label and --drop-label"):
        run(tmp_path, vocab, out="x", keep_labels=["A"], drop_labels=["A"])


# ---- atomic output ---------------------------------------------------------------------------------------------

def test_existing_output_refused_then_overwritten(small, vocab):
    tmp_path, _ = small
    out = tmp_path / "data"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(DataPrepError, match="already exists.*\n  fix: pass --overwrite"):
        run(tmp_path, vocab)
    assert (out / "old.txt").exists()
    run(tmp_path, vocab, overwrite=True)
    assert not (out / "old.txt").exists() and (out / "prep_report.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "slue"]


def test_crash_leaves_no_output(small, vocab, monkeypatch):
    tmp_path, _ = small
    real_write = slue_output.write_split
    calls = []

    def crash_on_second_split(*args):
        calls.append(args[1])
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        return real_write(*args)

    monkeypatch.setattr(slue_output, "write_split", crash_on_second_split)
    with pytest.raises(OSError, match="simulated"):
        run(tmp_path, vocab)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slue"]  # neither data/ nor data.tmp-<pid>/
    # With --overwrite, a crash keeps the old output as it was.
    monkeypatch.setattr(slue_output, "write_split", real_write)
    run(tmp_path, vocab)
    before = sorted(os.listdir(tmp_path / "data"))
    monkeypatch.setattr(slue_output, "write_split", crash_on_second_split)
    calls.clear()
    with pytest.raises(OSError):
        run(tmp_path, vocab, overwrite=True)
    assert sorted(os.listdir(tmp_path / "data")) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "slue"]


# ---- bad input -------------------------------------------------------------------------------------------------

def _set(split, i, **values):
    def edit(rows, root):
        rows[split][i].update(values)
    return edit


def _audio(split, i, make):
    def edit(rows, root):
        r = rows[split][i]
        make(os.path.join(root, f"{split}_raw", f"{r['id']}.flac"), r)
    return edit


def _dup(rows, root):
    rows["dev"][3]["id"] = rows["dev"][1]["id"]


def _remove(path, r):
    os.remove(path)


def _garbage(path, r):
    with open(path, "wb") as f:
        f.write(b"not a flac file at all")


def _rate_8k(path, r):
    sf.write(path, np.zeros(8000, dtype=np.int16), 8000, subtype="PCM_16")


def _short(path, r):  # the clip ends 10 ms before end_second
    sf.write(path, np.zeros(int(float(r["end_second"]) * SR) - 160, dtype=np.int16), SR, subtype="PCM_16")


BAD = {
    "unknown label": (_set("fine-tune", 4, sentiment="positive"), "fine-tune", 4, "unknown label 'positive'"),
    "end before start": (_set("dev", 2, start_second="1.5", end_second="1.0"), "dev", 2, "bad segment"),
    "end equals start": (_set("fine-tune", 0, end_second="0.050"), "fine-tune", 0, "bad segment"),
    "not a number": (_set("dev", 0, start_second="abc"), "dev", 0, "not numbers"),
    "empty transcript": (_set("fine-tune", 6, normalized_text="  "), "fine-tune", 6, "empty transcript"),
    "duplicate id": (_dup, "dev", 3, "duplicate id \\(first on line 3\\)"),
    "missing audio": (_audio("dev", 1, _remove), "dev", 1, "is missing"),
    "unreadable audio": (_audio("fine-tune", 2, _garbage), "fine-tune", 2, "unreadable"),
    "wrong sample rate": (_audio("test", 1, _rate_8k), "test", 1, "8000 Hz"),
    "end beyond file": (_audio("dev", 4, _short), "dev", 4, "beyond the end"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_names_file_and_row(tmp_path, vocab, case):
    edit, split, i, reason = BAD[case]
    rows = {s: make_rows(s, labels, 100 * k) for k, (s, labels) in enumerate(SMALL.items())}
    root = str(tmp_path / "slue")
    if "audio" in case or "beyond" in case or "rate" in case:
        write_folder(root, rows)
        edit(rows, root)
    else:
        edit(rows, root)
        write_folder(root, rows)
    name = "slue-voxceleb_test_blind.tsv" if split == "test" else f"slue-voxceleb_{split}.tsv"
    line = i + 2  # 1-based, header = line 1
    with pytest.raises(DataPrepError, match=rf"{name}, line {line}: .*{reason}.*\n  fix: \S"):
        run(tmp_path, vocab)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slue"]

    report = run(tmp_path, vocab, skip_bad=True)
    rejected = pd.read_csv(tmp_path / "data" / "rejected.tsv", sep="\t", keep_default_na=False)
    assert len(rejected) == 1 and rejected.split[0] == split and rejected.line[0] == line
    assert report["rejected"] == {split: 1}
    checked = {s["split"]: s["total"] for s in report["steps"] if s["stage"] == "checked"}
    expected = {"fine-tune": 18, "dev": 6, "test": 4}
    expected[split] -= 1
    assert checked == expected and len(lines(tmp_path / "data" / f"{split}.id")) == expected[split]


def test_end_one_sample_past_the_file_is_tolerated(small, vocab):
    tmp_path, rows = small
    r = rows["dev"][0]
    n = int(float(r["end_second"]) * SR) - 1  # end_second rounds to one sample past the clip
    raw = tmp_path / "slue" / "dev_raw" / f"{r['id']}.flac"
    sf.write(str(raw), np.ones(n, dtype=np.int16), SR, subtype="PCM_16")
    run(tmp_path, vocab)
    a = int(float(r["start_second"]) * SR)
    assert sf.info(str(tmp_path / "data" / "audio" / "dev" / f"{r['id']}.flac")).frames == n - a


def test_missing_column(tmp_path, vocab):
    rows = {s: make_rows(s, labels) for s, labels in SMALL.items()}
    cols = {"dev": [c for c in COLUMNS if c != "sentiment"]}
    write_folder(str(tmp_path / "slue"), rows, columns=cols, audio=False)
    with pytest.raises(DataPrepError, match=r"slue-voxceleb_dev\.tsv, line 1: missing column\(s\) sentiment"):
        run(tmp_path, vocab)


def test_cli_prints_error_without_traceback_and_exits_2(small, vocab, capsys):
    tmp_path, _ = small
    args = ["--slue-dir", str(tmp_path / "slue"), "--out", str(tmp_path / "data"), "--spm", vocab[0],
            "--dict", vocab[1], "--workers", "1", "--few-shot", "2", "--balance", "none"]
    assert sv.main(args) == 0
    assert "train" not in os.listdir(tmp_path / "data") and (tmp_path / "data" / "fine-tune.k2.id").exists()
    assert "fine-tune.k2" in capsys.readouterr().out
    assert sv.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("xmodal-prepare-slue: error: ") and "already exists" in err and "Traceback" not in err
    assert sv.main(args[:-2] + ["--overwrite", "--few-shot", "99"]) == 2
    assert "few-shot k=99" in capsys.readouterr().err
