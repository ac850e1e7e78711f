"""The SpeechT5 text vocabulary: a SentencePiece char model plus the fairseq dict.txt that mirrors it.

The official `spm_char.model` has 79 pieces (ids 0-3 = <s>,<pad>,</s>,<unk>; id 4 = "▁"); `dict.txt` lists pieces
4..78 in id order, so fairseq dictionary index == SentencePiece id. The task then appends <mask> and <ctc_blank>:
V = 4 + 75 + 2 = 81. `make_char_vocab` builds a vocabulary with exactly that layout for tests and the demo.
"""
import io
import os
import string
import tempfile
from typing import List, Tuple

from fairseq.data import Dictionary

from .data.utf8 import read_utf8

# 74 characters + "▁" = 75 dictionary lines, as in the official vocabulary.
CHARSET = string.ascii_lowercase + string.ascii_uppercase + string.digits + "'.,?!-:;\"()&"
EXTRA_SYMBOLS = ("<mask>", "<ctc_blank>")  # appended by SpeechT5Task.__init__, in this order


def load_text_dictionary(dict_path: str) -> Dictionary:
    """dict.txt + <mask> + <ctc_blank>, exactly as the official task builds it (81 symbols for the official file)."""
    if not os.path.isfile(dict_path):
        raise FileNotFoundError(f"text dictionary {dict_path} not found: copy SpeechT5's dict.txt there")
    return with_extra_symbols(Dictionary.load(io.StringIO(read_utf8(dict_path))))  # BOM stripped, non-UTF-8 named


def with_extra_symbols(d: Dictionary) -> Dictionary:
    """`d` + <mask> + <ctc_blank>, as SpeechT5Task appends them to every dictionary it loads (text and SID labels)."""
    for sym in EXTRA_SYMBOLS:
        d.add_symbol(sym)
    return d


def make_char_vocab(out_dir: str, charset: str = CHARSET) -> Tuple[str, str]:
    """Train a char SentencePiece model over `charset` and write spm_char.model + dict.txt; returns both paths."""
    import sentencepiece as spm

    os.makedirs(out_dir, exist_ok=True)
    # Every character in a few lines: a char model's vocabulary is exactly the characters it has seen.
    lines: List[str] = [" ".join(charset[i : i + 8]) for i in range(0, len(charset), 8)] * 4
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus.txt")
        with open(corpus, "w") as f:
            f.write("\n".join(lines) + "\n")
        prefix = os.path.join(tmp, "spm_char")
        spm.SentencePieceTrainer.train(
            input=corpus, model_prefix=prefix, model_type="char", vocab_size=4 + len(charset) + 1,
            character_coverage=1.0, bos_id=0, pad_id=1, eos_id=2, unk_id=3, minloglevel=2,
        )
        sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
        model_path = os.path.join(out_dir, "spm_char.model")
        with open(prefix + ".model", "rb") as src, open(model_path, "wb") as dst:
            dst.write(src.read())
    dict_path = os.path.join(out_dir, "dict.txt")
    d = Dictionary()  # its 4 specials are SentencePiece ids 0-3, so `<piece> 1` lines for ids 4.. follow them
    for i in range(4, sp.get_piece_size()):
        d.add_symbol(sp.id_to_piece(i))
    d.save(dict_path)
    return model_path, dict_path


def unencodable_chars(sp, text: str) -> List[str]:
    """Characters of `text` that the SentencePiece model `sp` can only encode as <unk>, in order of appearance.

    One rule for data preparation and t2c: such a transcript is a bad row (prep rejects it, --skip-bad leaves it
    out; t2c refuses the folder naming the line), never a silent <unk>."""
    unk = sp.unk_id()
    bad = [p.replace("\u2581", "") for p in sp.encode(text, out_type=str) if p != "<unk>" and sp.piece_to_id(p) == unk]
    return list(dict.fromkeys("".join(bad)))
