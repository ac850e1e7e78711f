"""The shared vocabulary below every layer: one selector grammar (freezing = transfer = transplants), the modalities
table, and the one dictionary check of a checkpoint's task_state. Fast: a tiny model built in memory, no training."""
from types import SimpleNamespace

import pytest

from fairseq_xmodal import modalities, selectors, task_state
from fairseq_xmodal.models.speecht5 import SpeechT5Classifier, SpeechT5TinyConfig
from fairseq_xmodal.selectors import SelectorError, parse_selector, parse_selectors, select
from fairseq_xmodal.tasks.s2c import S2CTask
from fairseq_xmodal.tasks.t2c import T2CTask
from fairseq_xmodal.transfer import TransferError, assign


@pytest.fixture(scope="module")
def tiny():
    model = SpeechT5Classifier(SpeechT5TinyConfig(encoder_layers=3), 81, 1, 7, target_prenet="text_prenet")
    return model, [n for n, _ in model.named_parameters()], list(model.state_dict())


def test_freezing_and_transfer_read_one_grammar(tiny):
    """Every spelling names the same parameters when model.freeze uses it as when xmodal-transfer does."""
    model, params, keys = tiny
    for text in ("encoder.layers.last", "encoder.layers.0,2", "encoder.layers.0-1", "encoder.layers.middle",
                 "encoder.rest", "prenet", "head", "decoder.layers.first", "encoder.layers"):
        model.set_frozen([text])
        frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        sel = parse_selector(text).for_task_prenet("text_prenet")
        chosen = {k for k, a in assign([(sel, "init"), (parse_selector("all"), "source")], keys).items()
                  if a.origin == "init"}
        assert frozen and frozen == chosen & set(params), text  # state-dict keys = parameters + buffers
    model.set_frozen([])
    assert select(["encoder.layers.last"], params) == [n for n in params if n.startswith("encoder.layers.2.")]
    assert select(["encoder.layers.middle"], params) == [n for n in params if n.startswith("encoder.layers.1.")]
    # a comma list continues a layer list with bare numbers, in one string or several
    assert [s.text for s in parse_selectors(["encoder.layers.0,2,decoder", "head"])] == \
        ["encoder.layers.0,2", "decoder", "head"]
    # units for logs and for ${xmodal_transplanted:} are selectors of the same grammar
    units = selectors.describe(select(["encoder.layers.0,2", "head"], params), params)
    assert units == ["encoder.layers.0", "encoder.layers.2", "head"]
    assert select(units, params) == select(["encoder.layers.0,2", "head"], params)


def test_refusals_are_one_line_naming_the_fix(tiny):
    _, params, keys = tiny
    for bad, msg in (("encoder.layers=0,5", "write encoder.layers.0,5"), ("encoders", "unknown group"),
                     ("head.rest", "only encoder and decoder"), ("encoder.layers.x", "layer list"),
                     ("encoder.layers.3-1", "empty range")):
        with pytest.raises(SelectorError, match=msg) as e:
            parse_selector(bad)
        assert "\n" not in str(e.value)
    with pytest.raises(SelectorError, match=r"matches no key of the model: encoder: layers '5' are not within 0-2"):
        select(["encoder.layers.5"], params, "model.freeze")
    with pytest.raises(SelectorError, match="the task's own prenet"):
        select(["prenet"], params)
    with pytest.raises(TransferError, match="matches no key"):  # the transfer's error type, same message
        assign([(parse_selector("decoder.layers.4"), "init")], keys)


def test_modalities_are_one_table():
    assert S2CTask.modality is modalities.SPEECH and T2CTask.modality is modalities.TEXT
    assert modalities.SPEECH.other is modalities.TEXT and modalities.TASKS == ("s2c", "t2c")
    assert {m.prenet for m in modalities.MODALITIES.values()} <= set(selectors.GROUPS)
    assert modalities.of_net_input({"src_tokens": 0, "src_lengths": 0}) is modalities.TEXT
    assert modalities.of_task("s2c").prenet == "speech_prenet"
    with pytest.raises(ValueError, match="use one of s2c, t2c"):
        modalities.of_task("asr")


def _task(labels, symbols, padded=True):
    return SimpleNamespace(
        class_dictionary=SimpleNamespace(labels=labels, padded=padded, source="/new/labels.sent.txt"),
        text_dictionary=SimpleNamespace(symbols=symbols), cfg=SimpleNamespace(labels="sent", text_dictionary=None,
                                                                              data="/new"))


def test_one_dictionary_check_for_transfer_training_and_evaluation():
    labels, symbols = ["Negative", "Neutral", "Positive"], ["<s>", "a", "b"]
    state = {"cfg": {"task": {"data": "/old"}},
             "task_state": task_state.record(_task(labels, symbols).class_dictionary, SimpleNamespace(symbols=symbols))}
    task_state.check_dictionaries(state, "ck.pt", _task(labels, symbols))  # the same data: nothing to say
    with pytest.raises(task_state.DictionaryMismatch) as e:
        task_state.check_dictionaries(state, "ck.pt", _task(labels[::-1], symbols), "source", also=", or X")
    msg = str(e.value)
    assert msg.startswith("class dictionary mismatch (same labels, other order: the head rows would be silently "
                          "permuted): source ck.pt") and "/old/labels.sent.txt" in msg and msg.endswith(", or X")
    with pytest.raises(KeyError, match="text dictionary mismatch.*/new/dict.txt.*index 1: 'a' vs 'c'"):
        task_state.check_dictionaries(state, "ck.pt", _task(labels, ["<s>", "c", "b"]), error=KeyError)
    with pytest.raises(task_state.DictionaryMismatch, match="records no text dictionary"):
        task_state.check_text_symbols({"task_state": {}}, "ck.pt", _task(labels, symbols))
