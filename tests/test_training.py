"""Real fairseq-hydra-train runs of s2c and t2c: they learn, they resume, and evaluation is full-length."""
import re

import pytest
import torch
from fairseq import checkpoint_utils

from conftest import hydra_train
from fairseq_xmodal.metrics import confusion_matrix, scores


def evaluate(checkpoint, split):
    """checkpoint_best on a held-out split, through fairseq's own loader and batch iterator."""
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([checkpoint])
    model = models[0].eval()
    task.load_dataset(split)
    dataset = task.dataset(split)
    itr = task.get_batch_iterator(dataset, max_sentences=8, required_batch_size_multiple=1).next_epoch_itr(shuffle=False)
    gold, pred = [], []
    rows = task.class_dictionary.label_rows
    with torch.no_grad():
        for sample in itr:
            logits = model(**sample["net_input"])[:, rows]
            gold += sample["target"].tolist()
            pred += logits.argmax(-1).tolist()
    assert len(gold) == len(dataset)  # nothing dropped
    return scores(confusion_matrix(gold, pred, len(rows)), task.class_dictionary.labels)


@pytest.mark.parametrize("task,updates,lr", [("t2c", 400, 1e-3), ("s2c", 250, 5e-4)])
def test_learnable_corpus_reaches_macro_f1_0_9_on_held_out_data(task, updates, lr, corpus_dir, imported_init, tmp_path):
    run = tmp_path / task
    hydra_train(f"{task}_demo", str(run), f"task.data={corpus_dir}", f"optimization.max_update={updates}",
                f"checkpoint.finetune_from_model={imported_init[task]}", f"optimization.lr=[{lr}]")
    log = (run / "hydra_train.log").read_text()
    assert "loading pretrained model from" in log  # really started from the imported official weights
    best = max(float(v) for v in re.findall(r"best_macro_f1 ([0-9.]+)", log))
    assert best >= 0.9, log[-2000:]
    held_out = evaluate(str(run / "checkpoints" / "checkpoint_best.pt"), "test")
    assert held_out["macro_f1"] >= 0.9, held_out


def test_resume_from_checkpoint_last_continues_the_update_count(corpus_dir, imported_init, tmp_path):
    run = tmp_path / "resume"
    common = (f"task.data={corpus_dir}", f"checkpoint.finetune_from_model={imported_init['t2c']}")
    hydra_train("t2c_demo", str(run), *common, "optimization.max_update=12")
    state = checkpoint_utils.load_checkpoint_to_cpu(str(run / "checkpoints" / "checkpoint_last.pt"))
    assert state["optimizer_history"][-1]["num_updates"] == 12
    # Same run directory again with a larger budget: fairseq must resume, not re-load the pretrained weights.
    proc = hydra_train("t2c_demo", str(run), *common, "optimization.max_update=20")
    log = (run / "hydra_train.log").read_text()
    assert re.search(r"Loaded checkpoint .*checkpoint_last\.pt \(epoch \d+ @ 12 updates\)", log), log[-3000:]
    state = checkpoint_utils.load_checkpoint_to_cpu(str(run / "checkpoints" / "checkpoint_last.pt"))
    assert state["optimizer_history"][-1]["num_updates"] == 20
    assert proc.returncode == 0
