"""Clean refusals, never a lost file: the overwrite rule, seeded imports, evaluation outputs written together, full
or read-only output locations, bad audio, checkpoints that do not fit the data at fine-tune start, half-written
checkpoint_last.pt in a plain run, relative task.data under Hydra, SIGKILL'd array jobs."""
import errno
import hashlib
import json
import os
import shutil
import subprocess

import pytest
import torch

from conftest import hydra_train, run_cli, tiny_mount
from fairseq_xmodal import sweeps
from fairseq_xmodal.cli import slurm_array
from fairseq_xmodal.checkpoints import load_state
from refusals import assert_refused, assert_training_refused


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def import_cmd(checkpoint, corpus_dir, out, *extra, task="t2c"):
    return ["xmodal-import-official", "--checkpoint", str(checkpoint), "--task", task, "--data", corpus_dir,
            "--out", str(out), *extra]


# ---------------------------------------------------------------------------------------------------------------
# xmodal-import-official: the output rule, the seed, the wrong kind of checkpoint


def test_import_never_overwrites_its_input_or_an_existing_out(official_tiny, imported_init, corpus_dir, tmp_path):
    official = tmp_path / "speecht5_base.pt"
    shutil.copy(official_tiny, official)
    before = digest(official)
    assert_refused(run_cli(import_cmd(official, corpus_dir, official, "--overwrite"), check=False), official,
                   "input")
    assert digest(official) == before

    out = tmp_path / "t2c.pt"
    out.write_bytes(b"precious")
    assert_refused(run_cli(import_cmd(official, corpus_dir, out), check=False), out, "--overwrite")
    assert out.read_bytes() == b"precious"

    # a converted checkpoint given to the import: say which command it needs
    line = assert_refused(run_cli(import_cmd(imported_init["s2c"], corpus_dir, tmp_path / "x.pt"), check=False),
                          imported_init["s2c"], "xmodal-transfer")
    assert "already a fairseq_xmodal checkpoint" in line
    assert not (tmp_path / "x.pt").exists()


def test_import_is_seeded_and_reproducible(official_tiny, corpus_dir, tmp_path):
    from fairseq_xmodal.cli import import_official as cli
    from fairseq_xmodal.models.official import SID_HEAD

    a, b, c = (tmp_path / n for n in ("a.pt", "b.pt", "c.pt"))
    run_cli(import_cmd(official_tiny, corpus_dir, a))  # default seed, in its own process
    torch.manual_seed(123)  # the global RNG state must not matter
    assert cli.main(import_cmd(official_tiny, corpus_dir, b, "--seed", "1")[1:]) == 0
    assert cli.main(import_cmd(official_tiny, corpus_dir, c, "--seed", "7")[1:]) == 0
    sa, sb, sc = (load_state(str(p))["model"] for p in (a, b, c))
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)  # every tensor, byte for byte
    assert not torch.equal(sa[SID_HEAD], sc[SID_HEAD])  # the seed is what draws the head
    assert all(torch.equal(sa[k], sc[k]) for k in sa if k != SID_HEAD)
    report = json.load(open(f"{a}.import.json"))
    assert report["seed"] == 1 and "manual_seed(1)" in report["init"]
    assert json.load(open(f"{c}.import.json"))["seed"] == 7
    assert load_state(str(c))["extra_state"]["xmodal_provenance"]["import_official"]["seed"] == 7


def test_modality_from_an_official_file_reads_it_once(official_tiny, imported_init, corpus_dir, tmp_path, monkeypatch):
    from fairseq_xmodal import checkpoints
    from fairseq_xmodal.transfer import TransferPlan, transfer

    reads = []
    real = checkpoints.safe_torch_load
    monkeypatch.setattr(checkpoints, "safe_torch_load", lambda f, **kw: reads.append(str(f)) or real(f, **kw))
    transfer(TransferPlan(source=imported_init["s2c"], task="t2c", data=corpus_dir, out=str(tmp_path / "t.pt"),
                          modality_from=official_tiny))
    assert reads.count(os.path.abspath(official_tiny)) == 1, reads


# ---------------------------------------------------------------------------------------------------------------
# Output locations that cannot be written


def test_full_and_read_only_output_locations_are_named(official_tiny, corpus_dir, tmp_path):
    with tiny_mount(tmp_path / "full", "size=64k") as full:
        out = full / "t2c.pt"
        line = assert_refused(run_cli(import_cmd(official_tiny, corpus_dir, out), check=False), out,
                              "no space left")
        assert "choose another output location" in line
        assert os.listdir(full) == []  # no temp file left behind
    with tiny_mount(tmp_path / "ro", "ro") as ro:
        out = ro / "sub" / "t2c.pt"
        assert_refused(run_cli(import_cmd(official_tiny, corpus_dir, out), check=False), ro / "sub",
                       "read-only file system")


def test_evaluate_on_a_disk_that_fills_between_its_two_files(imported_init, corpus_dir, tmp_path):
    """Through the console: room for predictions.tsv but not for metrics.json. Exit 2, one line naming metrics.json,
    and the folder holds what it held before (nothing, or the previous pair), no temp file."""
    page = os.sysconf("SC_PAGE_SIZE")

    def cmd(out, split, *extra):
        return ["xmodal-evaluate", "--checkpoint", imported_init["t2c"], "--task", "t2c", "--data", corpus_dir,
                "--split", split, "--out", str(out), *extra]

    def pages(path):
        return -(-os.path.getsize(path) // page)

    ref = tmp_path / "ref"  # the sizes this evaluation writes
    run_cli(cmd(ref, "test"))
    pred, metrics = pages(ref / "predictions.tsv"), pages(ref / "metrics.json")
    checkpoint = digest(imported_init["t2c"])
    with tiny_mount(tmp_path / "fresh", f"size={pred * page}") as disk:
        assert_refused(run_cli(cmd(disk / "eval", "test"), check=False), disk / "eval" / "metrics.json",
                       "no space left")
        assert os.listdir(disk / "eval") == []  # neither file
    with tiny_mount(tmp_path / "full", f"size={(2 * pred + metrics) * page}") as disk:
        shutil.copytree(ref, disk / "eval")  # the previous pair (another split's), then room for one more tsv only
        before = {n: (disk / "eval" / n).read_bytes() for n in ("predictions.tsv", "metrics.json")}
        assert_refused(run_cli(cmd(disk / "eval", "valid", "--overwrite"), check=False),
                       disk / "eval" / "metrics.json", "no space left")
        assert {n: (disk / "eval" / n).read_bytes() for n in before} == before
        assert sorted(os.listdir(disk / "eval")) == ["metrics.json", "predictions.tsv"]
    assert digest(imported_init["t2c"]) == checkpoint


# ---------------------------------------------------------------------------------------------------------------
# Evaluation: bad audio, outputs together or not at all


@pytest.fixture()
def damaged_corpus(corpus_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(corpus_dir, data)
    return data


def test_corrupt_or_missing_audio_at_evaluation(imported_init, damaged_corpus, tmp_path):
    data = damaged_corpus
    flac = data / "audio" / "valid" / "valid_0003.flac"
    flac.write_bytes(flac.read_bytes()[:200])  # truncated: header only
    out = tmp_path / "eval"
    cmd = ["xmodal-evaluate", "--checkpoint", imported_init["s2c"], "--task", "s2c", "--data", str(data),
           "--out", str(out)]
    line = assert_refused(run_cli(cmd, check=False), flac, "corrupt")
    assert "valid.tsv" in line and "line 5" in line
    flac.unlink()
    assert_refused(run_cli(cmd, check=False), flac, "missing")
    assert not out.exists()


def test_evaluation_writes_both_files_or_neither(imported_init, corpus_dir, tmp_path, monkeypatch, capsys):
    from fairseq_xmodal.evaluation import evaluate as ev

    out = tmp_path / "eval"
    cfg = ev.EvalConfig(checkpoint=imported_init["t2c"], task="t2c", data=corpus_dir, split="valid", out_dir=str(out))
    ev.evaluate_checkpoint(cfg)
    progress = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("evaluate valid: ")]
    assert progress and progress[-1].startswith("evaluate valid: 3/3 batch (100%)")  # 24 rows, batch size 8
    before = {n: (out / n).read_bytes() for n in ("predictions.tsv", "metrics.json")}

    def full_disk(obj, path):
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(ev, "atomic_write_json", full_disk)
    with pytest.raises(OSError):
        ev.evaluate_checkpoint(ev.EvalConfig(**{**cfg.__dict__, "overwrite": True, "split": "test"}))
    assert {n: (out / n).read_bytes() for n in before} == before  # the previous pair, untouched
    assert sorted(os.listdir(out)) == ["metrics.json", "predictions.tsv"]  # no temp or backup file
    fresh = tmp_path / "fresh"
    with pytest.raises(OSError):
        ev.evaluate_checkpoint(ev.EvalConfig(**{**cfg.__dict__, "out_dir": str(fresh)}))
    assert os.listdir(fresh) == []  # neither file


# ---------------------------------------------------------------------------------------------------------------
# Training starts: checkpoints that do not fit, half-written checkpoint_last.pt, relative task.data


def test_finetune_from_official_or_mismatched_checkpoint_is_refused_at_start(official_tiny, imported_init,
                                                                              damaged_corpus, tmp_path):
    inputs = {p: digest(p) for p in (official_tiny, imported_init["t2c"])}
    proc = hydra_train("t2c_demo", str(tmp_path / "official_run"), f"task.data={damaged_corpus}",
                       "optimization.max_update=1", f"checkpoint.finetune_from_model={official_tiny}", check=False)
    assert_training_refused(proc, f"{official_tiny} is an official SpeechT5 checkpoint", "xmodal-import-official")

    # the text dictionary differs (two symbols swapped): the text prenet's rows would mean other symbols
    dict_txt = damaged_corpus / "dict.txt"
    original = dict_txt.read_text()
    rows = original.splitlines()
    rows[4], rows[5] = rows[5], rows[4]
    dict_txt.write_text("\n".join(rows) + "\n")
    proc = hydra_train("t2c_demo", str(tmp_path / "symbols_run"), f"task.data={damaged_corpus}",
                       "optimization.max_update=1", f"checkpoint.finetune_from_model={imported_init['t2c']}",
                       check=False)
    assert_training_refused(proc, "text dictionary mismatch", imported_init["t2c"], dict_txt)
    dict_txt.write_text(original)

    (damaged_corpus / "labels.sent.txt").write_text("Positive\nNegative\nNeutral\n")  # same labels, other order
    for run, option in (("reordered_run", "finetune_from_model"), ("restore_run", "restore_file")):
        proc = hydra_train("t2c_demo", str(tmp_path / run), f"task.data={damaged_corpus}",
                           "optimization.max_update=1", f"checkpoint.{option}={imported_init['t2c']}", check=False)
        assert_training_refused(proc, "class dictionary mismatch", "silently permuted", imported_init["t2c"])
    assert not list(tmp_path.glob("*_run/checkpoints/*.pt"))
    assert {p: digest(p) for p in inputs} == inputs


def test_plain_run_repairs_a_half_written_checkpoint_last(imported_init, corpus_dir, tmp_path):
    run = tmp_path / "run"
    common = [f"task.data={corpus_dir}", f"checkpoint.finetune_from_model={imported_init['t2c']}",
              "checkpoint.save_interval_updates=2", "dataset.batch_size=4"]
    hydra_train("t2c_demo", str(run), *common, "optimization.max_update=4")
    ckpts = run / "checkpoints"
    last = ckpts / "checkpoint_last.pt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 3])  # killed while fairseq copied it
    proc = hydra_train("t2c_demo", str(run), *common, "optimization.max_update=6")
    log = (run / "hydra_train.log").read_text()
    assert "checkpoint_last.pt was incomplete: replaced by a copy of" in log, proc.stderr[-2000:]
    assert "Loaded checkpoint" in log and "@ 4 updates" in log
    assert load_state(str(last))["optimizer_history"][-1]["num_updates"] == 6


def test_relative_or_missing_task_data_under_hydra_is_one_line(corpus_dir, tmp_path):
    parent = os.path.dirname(corpus_dir)
    rel = os.path.basename(corpus_dir)
    proc = hydra_train("t2c_demo", str(tmp_path / "run"), f"task.data={rel}", "optimization.max_update=1",
                       check=False, cwd=parent)
    assert_training_refused(proc, f"task.data={rel}: no such data folder", f"e.g. task.data={corpus_dir}",
                            "Hydra set to the run folder")
    missing = tmp_path / "no_such_data"
    proc = hydra_train("t2c_demo", str(tmp_path / "run2"), f"task.data={missing}", "optimization.max_update=1",
                       check=False)
    assert_training_refused(proc, f"task.data={missing}: no such data folder")
    assert not missing.exists() and not list(tmp_path.glob("run*/checkpoints/*.pt"))


def test_bad_data_folder_files_under_hydra_are_one_line(corpus_dir, tmp_path):
    """A labels file that is not UTF-8 (read at task setup) and a malformed manifest line (read at load_dataset):
    exit 2 and one line naming the file (and line), not Hydra's traceback and exit 1; the files are left as they were."""
    latin = tmp_path / "latin1"
    shutil.copytree(corpus_dir, latin)
    labels = latin / "labels.sent.txt"
    labels.write_bytes(labels.read_bytes().replace(b"Neutral", "Neutr\u00e9l".encode("latin1")))
    before = labels.read_bytes()
    proc = hydra_train("t2c_demo", str(tmp_path / "run"), f"task.data={latin}", "optimization.max_update=1",
                       check=False)
    assert_training_refused(proc, f"{labels} is not UTF-8 text", "iconv")
    assert labels.read_bytes() == before

    broken = tmp_path / "broken"
    shutil.copytree(corpus_dir, broken)
    manifest = broken / "valid.tsv"
    rows = manifest.read_text().splitlines()
    manifest.write_text("\n".join(rows[:3] + [rows[3].replace("\t", " ")] + rows[4:]) + "\n")
    proc = hydra_train("s2c_demo", str(tmp_path / "run2"), f"task.data={broken}", "optimization.max_update=1",
                       check=False)
    assert_training_refused(proc, f"{manifest}:4: expected")
    assert not list(tmp_path.glob("run*/checkpoints/*.pt"))


# ---------------------------------------------------------------------------------------------------------------
# A Slurm array task whose training is SIGKILL'd (OOM killer, node failure)


def test_sigkilled_array_job_is_reported_killed_and_resumes(tmp_path):
    job_dir = tmp_path / "sweep" / "lr=1"
    table = tmp_path / "jobs.tsv"
    table.write_text(f"{job_dir}\toptimization.lr=[1]\n")
    train = tmp_path / "fake_train.sh"
    starts = tmp_path / "starts"
    # first start: dies by SIGKILL as under the OOM killer; second start: trains to the end
    train.write_text(f"#!/bin/bash\necho \"$@\" >> {starts}\n"
                     f"[ $(wc -l < {starts}) -ge 2 ] && exit 0\nkill -9 $$\n")
    train.chmod(0o755)
    env = {**os.environ, "XMODAL_TABLE": str(table), "XMODAL_CONFIG_DIR": "/unused", "XMODAL_CONFIG_NAME": "x",
           "XMODAL_TRAIN": str(train), "SLURM_ARRAY_TASK_ID": "0", "SLURM_JOB_ID": "77"}
    script = slurm_array.TEMPLATE
    first = subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 137
    assert "killed by SIGKILL" in first.stdout and "out-of-memory" in first.stdout and "resumes" in first.stdout
    job = sweeps.read_job(str(job_dir))
    assert job["status"] == "interrupted" and "out-of-memory" in job["error"], job
    assert [e["event"] for e in sweeps.read_events(str(job_dir))] == ["killed"]

    second = subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=60)  # resubmission
    assert second.returncode == 0, second.stdout
    runs = starts.read_text().splitlines()
    assert len(runs) == 2 and runs[0] == runs[1] and f"hydra.run.dir='{job_dir}'" in runs[0]  # same folder: resumes
    assert (job_dir / "DONE").exists() and sweeps.read_job(str(job_dir))["status"] == "done"


def test_every_writing_command_needs_overwrite_to_replace(tmp_path, capsys):
    from fairseq_xmodal.cli import make_official, report, sweep_table

    out = tmp_path / "official"
    assert make_official.main(["--out", str(out)]) == 0
    before = digest(out / "speecht5_base.pt")
    assert make_official.main(["--out", str(out)]) == 2
    assert make_official.main(["--out", str(out), "--seed", "2"]) == 2
    assert digest(out / "speecht5_base.pt") == before
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "report.md").write_text("old")
    assert report.main([str(tmp_path), "--out", str(tmp_path / "report")]) == 2
    md = tmp_path / "table.md"
    md.write_text("old")
    assert sweep_table.main([str(tmp_path), "--markdown", str(md)]) == 2
    assert md.read_text() == "old" and (tmp_path / "report" / "report.md").read_text() == "old"
    err = [ln for ln in capsys.readouterr().err.splitlines() if ": error: " in ln]
    assert len(err) == 4 and all("--overwrite" in ln for ln in err), err
    assert str(out / "speecht5_base.pt") in err[0] and str(md) in err[3]


def test_prepare_transplants_replaces_nothing_without_overwrite(imported_init, corpus_dir, tmp_path):
    out = tmp_path / "tp"

    def cmd(layers, *extra):
        return ["xmodal-prepare-transplants", "--source", imported_init["s2c"], "--base", imported_init["t2c"],
                "--task", "t2c", "--data", corpus_dir, "--out", str(out), "--inits", "xavier_uniform",
                "--layers", layers, *extra]

    run_cli(cmd("first"))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # other layer sets into the same folder: the first grid's manifest is not replaced unasked
    assert_refused(run_cli(cmd("last"), check=False), out / "transplants.json", "--overwrite")
    # one file of the grid exists: refused before any other is written (no partial grid)
    assert_refused(run_cli(cmd("last,first"), check=False), out / "first.xavier_uniform.pt", "--overwrite")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    run_cli(cmd("last", "--overwrite"))
    assert list(json.load(open(out / "transplants.json"))["layer_sets"]) == ["last"]


def test_output_below_a_file_is_one_line(official_tiny, imported_init, corpus_dir, tmp_path):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file where a folder was meant\n")
    assert_refused(run_cli(import_cmd(official_tiny, corpus_dir, blocker / "t2c.pt"), check=False), blocker,
                   "is a file, not a folder")
    assert_refused(run_cli(["xmodal-evaluate", "--checkpoint", imported_init["t2c"], "--task", "t2c", "--data",
                            corpus_dir, "--out", str(blocker / "eval")], check=False), blocker / "eval",
                   "goes through a file, not a folder")
    assert blocker.read_text() == "a file where a folder was meant\n"
