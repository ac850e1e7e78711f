"""A small learnable corpus in the final data-folder format (docs/data_format.md), written with soundfile.

Speech: each label has its own tone (plus noise, random length and amplitude), so a tiny model can learn it in a few
hundred updates. Text: templates whose sentiment word carries the label."""
import os

import numpy as np
import soundfile as sf

from fairseq_xmodal.text_vocab import make_char_vocab

LABELS = ["Negative", "Neutral", "Positive"]
TONE_HZ = {"Negative": 220.0, "Neutral": 550.0, "Positive": 1400.0}
WORDS = {"Negative": ["awful", "terrible", "horrible", "bad"], "Neutral": ["okay", "normal", "usual", "plain"],
         "Positive": ["great", "wonderful", "lovely", "excellent"]}
NOUNS = ["movie", "day", "talk", "idea", "trip", "song"]


def write_corpus(root: str, splits=(("train", 60), ("valid", 24), ("test", 24)), seed: int = 0, sample_rate: int = 16000,
                 min_s: float = 0.4, max_s: float = 1.2) -> str:
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    make_char_vocab(root)
    with open(os.path.join(root, "labels.sent.txt"), "w") as f:
        f.write("\n".join(LABELS) + "\n")
    for split, n in splits:
        audio_dir = os.path.join(root, "audio", split)
        os.makedirs(audio_dir, exist_ok=True)
        rows = []
        for i in range(n):
            label = LABELS[i % 3]
            uid = f"{split}_{i:04d}"
            length = int(rng.uniform(min_s, max_s) * sample_rate)
            t = np.arange(length) / sample_rate
            wav = 0.3 * rng.uniform(0.5, 1.0) * np.sin(2 * np.pi * TONE_HZ[label] * t) + 0.02 * rng.standard_normal(length)
            sf.write(os.path.join(audio_dir, uid + ".flac"), wav.astype(np.float32), sample_rate)
            text = f"the {rng.choice(NOUNS)} was {rng.choice(WORDS[label])} today"
            rows.append((uid, length, text, label))
        with open(os.path.join(root, f"{split}.tsv"), "w") as f:
            f.write(f"audio/{split}\n" + "".join(f"{u}.flac\t{n_}\n" for u, n_, _, _ in rows))
        for ext, col in (("id", 0), ("wrd", 2), ("sent", 3)):
            with open(os.path.join(root, f"{split}.{ext}"), "w") as f:
                f.write("".join(f"{r[col]}\n" for r in rows))
    return root
