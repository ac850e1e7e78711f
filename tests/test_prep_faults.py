"""xmodal-prepare-slue under faults: SIGTERM/SIGINT/SIGKILL during the audio pass, stale temp folders, the CPU count of
an allocation, every bad row in one run, case-only label typos, characters SentencePiece cannot encode (prep and t2c
alike), byte-order marks and non-UTF-8 files, progress lines in logs."""
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from conftest import BIN, tiny_mount
from data_prep.slue_rows import DataPrepError
from refusals import assert_refused, refusal_lines
from test_data_prep import SMALL, make_rows, run, vocab, write_folder  # noqa: F401  (vocab: fixture)


def small_folder(tmp_path, edit=None, n_copies=1):
    rows, start = {}, 0
    for split, labels in SMALL.items():
        rows[split] = make_rows(split, labels * n_copies, start)
        start += len(labels) * n_copies
    if edit:
        edit(rows)
    write_folder(str(tmp_path / "slue"), rows)
    return rows


def prep_cmd(tmp_path, vocab, *extra, out="data"):
    return [os.path.join(BIN, "xmodal-prepare-slue"), "--slue-dir", str(tmp_path / "slue"), "--out",
            str(tmp_path / out), "--spm", vocab[0], "--dict", vocab[1], *extra]


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def alive(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            state = next(line for line in f if line.startswith("State:"))
    except (OSError, StopIteration):
        return False
    return " Z " not in state and "zombie" not in state


def start_and_wait_for_workers(cmd, tmp_path):
    """Start the command; return (process, worker pids) once its audio pass is under way."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while time.time() < deadline:
        tmps = list(tmp_path.glob("data.tmp-*"))
        workers = children(proc.pid)
        if tmps and len(workers) >= 2 and any(tmps[0].glob("audio/*/*.flac")):
            return proc, workers
        if proc.poll() is not None:
            raise AssertionError(f"finished before the signal: {proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the audio pass did not start")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly_and_workers_end(tmp_path, vocab, sig):
    small_folder(tmp_path, n_copies=48)  # ~1300 utterances: the pass lasts seconds, long enough to be interrupted
    proc, workers = start_and_wait_for_workers(prep_cmd(tmp_path, vocab, "--workers", "2"), tmp_path)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err[-2000:]
    assert "Traceback" not in err
    lines = refusal_lines(err)
    assert len(lines) == 1, lines
    (line,) = lines
    assert f"interrupted by {signal.Signals(sig).name}" in line and str(tmp_path / "data") in line
    assert not list(tmp_path.glob("data*"))  # no temp folder, no output
    deadline = time.time() + 10
    while time.time() < deadline and any(alive(w) for w in workers):
        time.sleep(0.1)
    assert not [w for w in workers if alive(w)]


def test_sigkill_leaves_no_workers_and_the_next_run_names_the_temp_folder(tmp_path, vocab):
    small_folder(tmp_path, n_copies=48)
    proc, workers = start_and_wait_for_workers(prep_cmd(tmp_path, vocab, "--workers", "2"), tmp_path)
    proc.kill()  # SIGKILL: no handler runs
    proc.communicate(timeout=60)
    deadline = time.time() + 10
    while time.time() < deadline and any(alive(w) for w in workers):
        time.sleep(0.1)
    assert not [w for w in workers if alive(w)]  # the parent-death signal ended them
    (stale,) = tmp_path.glob("data.tmp-*")
    again = subprocess.run(prep_cmd(tmp_path, vocab, "--workers", "1"), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert str(stale) in again.stdout and f"rm -rf {stale}" in again.stdout
    assert stale.exists()  # named, not deleted behind the user's back


def test_full_output_disk_is_one_line_naming_the_output(tmp_path, vocab):
    small_folder(tmp_path, n_copies=4)
    before = {p: p.read_bytes() for p in (tmp_path / "slue").rglob("*") if p.is_file()}
    with tiny_mount(tmp_path / "disk", "size=64k") as disk:
        cmd = prep_cmd(tmp_path, vocab, "--workers", "2")
        out = disk / "data"
        cmd[cmd.index("--out") + 1] = str(out)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert_refused(proc, f"no space left on the device holding {out}:", "choose another output location")
        assert os.listdir(disk) == []  # the temp folder is removed, no output
    assert {p: p.read_bytes() for p in (tmp_path / "slue").rglob("*") if p.is_file()} == before


def test_workers_default_to_the_cpus_of_this_process(tmp_path, vocab, monkeypatch):
    small_folder(tmp_path)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    report = run(tmp_path, vocab, workers=None)
    assert report["audio"]["workers"] == 3
    from data_prep.slue_voxceleb import build_parser

    assert build_parser().parse_args(["--slue-dir", "a", "--out", "b", "--spm", "c", "--dict", "d"]).workers is None


def test_every_bad_row_is_reported_in_one_run(tmp_path, vocab):
    def edit(rows):
        rows["fine-tune"][1]["sentiment"] = "neutral"  # case only
        rows["fine-tune"][2]["normalized_text"] = "un café noir"  # a character spm_char cannot encode
        rows["dev"][0].update(start_second="2.0", end_second="1.0")
    rows = small_folder(tmp_path, edit)
    os.remove(tmp_path / "slue" / "test_raw" / f"{rows['test'][2]['id']}.flac")
    proc = subprocess.run(prep_cmd(tmp_path, vocab), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    err = proc.stderr
    assert "4 bad rows in" in err and "--skip-bad" in err
    assert "slue-voxceleb_fine-tune.tsv, line 3" in err and "did you mean 'Neutral'?" in err
    assert "slue-voxceleb_fine-tune.tsv, line 4" in err and "'é'" in err
    assert "slue-voxceleb_dev.tsv, line 2" in err and "bad segment" in err
    assert "slue-voxceleb_test_blind.tsv, line 4" in err and "is missing" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slue"]

    report = run(tmp_path, vocab, skip_bad=True)
    rejected = pd.read_csv(tmp_path / "data" / "rejected.tsv", sep="\t", keep_default_na=False)
    assert sorted(rejected.line) == [2, 3, 4, 4] and report["rejected"] == {"fine-tune": 2, "dev": 1, "test": 1}
    assert report["unknown_chars"]["fine-tune"] == {"é": 1}


def test_many_bad_rows_are_capped_with_a_count(tmp_path, vocab):
    def edit(rows):
        for r in rows["fine-tune"][:10] + rows["dev"][:4] + rows["fine-tune"][10:18]:
            r["sentiment"] = "Angry"
    small_folder(tmp_path, edit, n_copies=2)
    with pytest.raises(DataPrepError) as e:
        run(tmp_path, vocab)
    msg = str(e.value)
    n = msg.split(" bad rows", 1)[0]
    assert int(n) == 22 and "(first 20 shown)" in msg and "... and 2 more" in msg
    assert msg.count("unknown label 'Angry'") == 20


def test_t2c_refuses_unencodable_characters_with_the_prep_rule(corpus_dir, tmp_path):
    from fairseq_xmodal.checkpoints import build_task_and_model, make_cfg

    data = tmp_path / "data"
    shutil.copytree(corpus_dir, data, ignore=shutil.ignore_patterns("audio"))
    wrd = data / "valid.wrd"
    lines = wrd.read_text().splitlines()
    lines[2] = "the café was great today"
    wrd.write_text("\n".join(lines) + "\n")
    task, _ = build_task_and_model(make_cfg({"_name": "t2c", "data": str(data)}, {"_name": "speecht5_tiny"}))
    with pytest.raises(ValueError, match=rf"{wrd}:3: transcript character\(s\) 'é' cannot be encoded .*"
                                         r"xmodal-prepare-slue rejects such rows"):
        task.load_dataset("valid")


def test_byte_order_marks_are_stripped_and_non_utf8_is_named(tmp_path, vocab, corpus_dir):
    small_folder(tmp_path)
    tsv = tmp_path / "slue" / "slue-voxceleb_dev.tsv"
    tsv.write_bytes(b"\xef\xbb\xbf" + tsv.read_bytes())  # UTF-8 BOM before "id"
    dict_bom = tmp_path / "dict_bom.txt"
    dict_bom.write_bytes(b"\xef\xbb\xbf" + open(vocab[1], "rb").read())
    report = run(tmp_path, vocab, out="bom")
    assert report["splits"]["dev"]["rows"] == 6

    # the task side: BOM in labels.sent.txt and dict.txt
    from fairseq_xmodal.data.class_dictionary import ClassDictionary
    from fairseq_xmodal.text_vocab import load_text_dictionary

    labels = tmp_path / "labels.sent.txt"
    labels.write_bytes(b"\xef\xbb\xbfNegative\nNeutral\nPositive\n")
    assert ClassDictionary.load(str(labels)).labels == ["Negative", "Neutral", "Positive"]
    assert load_text_dictionary(str(dict_bom)).symbols == load_text_dictionary(vocab[1]).symbols

    tsv.write_bytes(tsv.read_bytes().replace(b"words of", "mots de caf\u00e9".encode("latin-1"), 1))
    proc = subprocess.run(prep_cmd(tmp_path, vocab, out="latin"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{tsv}: not UTF-8 text" in proc.stderr and "iconv" in proc.stderr
    labels.write_bytes("N\u00e9gatif\n".encode("latin-1"))
    with pytest.raises(ValueError, match=rf"{labels} is not UTF-8 text"):
        ClassDictionary.load(str(labels))


def test_progress_lines_in_a_log_file(tmp_path, vocab):
    small_folder(tmp_path, n_copies=2)
    proc = subprocess.run(prep_cmd(tmp_path, vocab, "--workers", "2"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    progress = [ln for ln in proc.stderr.splitlines() if ln.startswith("audio pass: ")]
    assert len(progress) >= 5 and re.match(r"audio pass: (\d+)/\1 utt \(100%\)", progress[-1]), progress
    assert "\r" not in proc.stderr


def test_progress_helper_by_time_and_percent():
    import io

    from fairseq_xmodal.progress import progress

    out = io.StringIO()
    assert list(progress(range(1000), 1000, "x", every_pct=25, stream=out)) == list(range(1000))
    assert [ln.split(" (")[0] for ln in out.getvalue().splitlines()] == ["x: 250/1000 it", "x: 500/1000 it",
                                                                        "x: 750/1000 it", "x: 1000/1000 it"]
    out = io.StringIO()

    def slow():
        for i in range(3):
            time.sleep(0.06)
            yield i
    list(progress(slow(), None, "y", every_s=0.05, stream=out))
    assert len(out.getvalue().splitlines()) == 3 and sys.stderr is not out
