"""xmodal-evaluate --shard i/n + --merge: the merged shards are byte for byte the unsharded predictions.tsv and
metrics.json (docs/transfer_and_evaluation.md), with fixed-size and with length-bucketed batches."""
import os

import pytest

from fairseq_xmodal.cli import evaluate as cli


def _bytes(d):
    return {n: open(os.path.join(d, n), "rb").read() for n in ("predictions.tsv", "metrics.json")}


@pytest.mark.parametrize("task,batching", [("s2c", ["--batch-size", "3"]),
                                           ("s2c", ["--max-tokens", "40000", "--batch-size", "100"]),
                                           ("t2c", ["--batch-size", "5"])])
def test_merged_shards_equal_the_unsharded_evaluation(task, batching, imported_init, corpus_dir, tmp_path, capsys):
    common = ["--checkpoint", imported_init[task], "--task", task, "--data", corpus_dir, "--split", "valid", "--cpu",
              *batching]
    assert cli.main(common + ["--out", str(tmp_path / "whole")]) == 0
    shards = [str(tmp_path / f"shard{i}") for i in range(3)]
    for i, d in enumerate(shards):
        assert cli.main(common + ["--shard", f"{i}/3", "--out", d]) == 0
    parts = [sum(1 for _ in open(os.path.join(d, "predictions.tsv"))) - 1 for d in shards]
    assert sum(parts) == 24 and all(parts)  # every valid row in exactly one shard, each shard some of them
    assert cli.main(["--merge", *reversed(shards), "--out", str(tmp_path / "merged")]) == 0
    assert _bytes(str(tmp_path / "merged")) == _bytes(str(tmp_path / "whole"))
    capsys.readouterr()

    assert cli.main(["--merge", *shards[:2], "--out", str(tmp_path / "incomplete")]) == 2
    assert "give each of 0..2 exactly once" in capsys.readouterr().err
    other = str(tmp_path / "test_split")
    assert cli.main(common[:-len(batching)] + batching + ["--split", "test", "--shard", "2/3", "--out", other]) == 0
    assert cli.main(["--merge", *shards[:2], other, "--out", str(tmp_path / "mixed")]) == 2
    assert "a shard of another evaluation" in capsys.readouterr().err
    assert cli.main(common + ["--shard", "3/3", "--out", str(tmp_path / "bad")]) == 2
