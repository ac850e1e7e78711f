"""`xmodal-make-demo-corpus`: a small synthetic corpus in the released SLUE-VoxCeleb layout, spoken by espeak-ng.

Sentences come from templates whose sentiment is carried by the words; several espeak-ng voices, rates and pitches
speak them. Each utterance sits inside a longer clip (0.2-0.8 s of low noise before and after) and
start_second/end_second point at the speech, as in the release. The label skew follows SLUE (mostly Neutral, few
Negative) and includes `<mixed>` and `Disagreement` rows, so every filtering path of xmodal-prepare-slue is exercised.
--prosody S > 0 also speaks Positive rows higher and faster and Negative rows lower and slower, as emotional speech
differs (docs/data_prep.md). Same seed => identical tsvs and identical audio bytes.
"""
import argparse
import concurrent.futures
import os
import shutil
import subprocess
import sys
from typing import Dict, List, Optional, Tuple

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from data_prep.slue_audio import SAMPLE_RATE
from data_prep.slue_output import publish
from data_prep.slue_voxceleb import LABELLED_TSVS
from fairseq_xmodal import console

ESPEAK_RATE = 22050
MAX_SPEECH_S, MIN_SPEECH_S = 4.0, 1.0
PAD_STEP = 160  # pads and speech are whole 10-ms steps, so start/end seconds are exact with 2 decimals

NOUNS = ["movie", "concert", "dinner", "service", "hotel", "trip", "game", "book", "show", "meeting", "lecture",
         "weather", "team", "song", "party", "interview", "restaurant", "flight", "project", "album", "holiday",
         "match", "film", "coffee"]
WORDS = {
    "pos_adj": ["wonderful", "amazing", "fantastic", "great", "lovely", "brilliant", "excellent", "delightful",
                "superb", "beautiful", "perfect", "fabulous"],
    "neg_adj": ["terrible", "awful", "horrible", "disappointing", "boring", "dreadful", "miserable", "painful",
                "annoying", "disgusting", "useless", "pathetic"],
    "pos_verb": ["loved", "enjoyed", "adored", "really liked", "was thrilled by"],
    "neg_verb": ["hated", "disliked", "regretted", "could not stand", "was upset by"],
    "day": ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"],
    "person": ["brother", "sister", "friend", "manager", "neighbour", "cousin", "agent", "producer"],
    "place": ["london", "the city", "the studio", "the office", "new york", "the old building"],
    "number": ["two", "three", "four", "five", "six", "seven", "eight", "nine"],
}
TEMPLATES = {
    "Positive": ["the {noun} was {pos_adj}", "i {pos_verb} the {noun}", "honestly the {noun} was {pos_adj}",
                 "it was a {pos_adj} {noun}", "we had a {pos_adj} time at the {noun}",
                 "that {noun} was just {pos_adj}", "the {noun} was {pos_adj} and {pos_adj}"],
    "Negative": ["the {noun} was {neg_adj}", "i {neg_verb} the {noun}", "honestly the {noun} was {neg_adj}",
                 "it was a {neg_adj} {noun}", "we had a {neg_adj} time at the {noun}",
                 "that {noun} was just {neg_adj}", "the {noun} was {neg_adj} and {neg_adj}"],
    "Neutral": ["the {noun} was on {day}", "we went to the {noun} on {day}", "i saw the {noun} with my {person}",
                "the {noun} started at {number}", "my {person} told me about the {noun}",
                "then we talked about the {noun}", "the {noun} is in {place}", "we moved the {noun} to {day}",
                "the {noun} took {number} hours"],
    "<mixed>": ["the {noun} was {pos_adj} but the {noun2} was {neg_adj}",
                "i {pos_verb} the {noun} but {neg_verb} the {noun2}"],
    "Disagreement": ["the {noun} was {pos_adj} i suppose", "i guess the {noun} was kind of {neg_adj}",
                     "the {noun} was fine i think"],
}
FILLERS = ["", "", "", "well", "so", "you know", "i mean"]
# (espeak-ng voice, base pitch 0-99): one "speaker" each; variants change formants and so the timbre.
SPEAKERS = [("en", 45), ("en-us", 50), ("en-gb-scotland", 40), ("en-029", 55), ("en-gb-x-rp", 48),
            ("en+f2", 60), ("en-us+f3", 65), ("en+f4", 62), ("en+m3", 38), ("en-us+m5", 42), ("en-gb-x-rp+f3", 58),
            ("en-029+m3", 44)]
RATES_WPM = (130, 190)
# --prosody: emotional speech is spoken differently (higher/faster when positive, lower/slower when negative). Offsets
# per label (pitch 0-99 scale, words per minute), times the --prosody strength; the speaker and rate spreads overlap
# them, so prosody is a cue, not the label.
PROSODY = {"Positive": (10, 25), "Negative": (-10, -25), "Neutral": (0, 0), "<mixed>": (0, 0), "Disagreement": (0, 0)}
# Label proportions per split (Neutral takes the rest); SLUE v0.2: fine-tune 22 % Positive / 4 % Negative /
# 0.8 % <mixed>, dev 18 % / 3.5 % / 0.2 % <mixed> / 1 % Disagreement. Negative is nudged up so that 240/80
# utterances still give about 10/5 Negative rows.
PROPORTIONS = {
    "fine-tune": {"Positive": 0.22, "Negative": 0.042, "<mixed>": 0.01},
    "dev": {"Positive": 0.18, "Negative": 0.0625, "<mixed>": 0.015, "Disagreement": 0.025},
    "test": {"Positive": 0.2, "Negative": 0.05},
}
ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"


class DemoCorpusError(RuntimeError):
    """The demo corpus cannot be made (missing espeak-ng, bad arguments)."""


def espeak_binary() -> str:
    path = shutil.which("espeak-ng")
    if path is None:
        raise DemoCorpusError("espeak-ng not found on PATH: install it with `apt-get install espeak-ng`")
    return path


def label_plan(n: int, proportions: Dict[str, float]) -> Dict[str, int]:
    """{label: rows} for n rows; every listed label gets at least one row once n >= 10, Neutral the rest."""
    plan = {}
    for label, frac in proportions.items():
        k = int(np.floor(frac * n + 0.5))
        plan[label] = max(k, 1) if n >= 10 else k
    plan["Neutral"] = n - sum(plan.values())
    if plan["Neutral"] < 0:
        raise DemoCorpusError(f"{n} utterances are too few for the label plan {plan}")
    return plan


def make_sentence(label: str, rng: np.random.Generator) -> str:
    """A lower-case sentence (SLUE normalized_text style) whose words carry `label`."""
    template = TEMPLATES[label][rng.integers(len(TEMPLATES[label]))]
    noun, noun2 = rng.choice(NOUNS, size=2, replace=False)
    fields = {k: v[rng.integers(len(v))] for k, v in WORDS.items()}
    if "{pos_adj} and {pos_adj}" in template or "{neg_adj} and {neg_adj}" in template:
        key = "pos_adj" if "pos_adj" in template else "neg_adj"
        a, b = rng.choice(WORDS[key], size=2, replace=False)
        template = template.replace("{%s}" % key, a, 1).replace("{%s}" % key, b, 1)
    text = template.format(noun=noun, noun2=noun2, **fields)
    filler = FILLERS[rng.integers(len(FILLERS))]
    return f"{filler} {text}".strip()


def synthesize(text: str, voice: str, rate: int, pitch: int) -> np.ndarray:
    """espeak-ng speech as float32 at 16 kHz, leading/trailing silence trimmed."""
    proc = subprocess.run([espeak_binary(), "-v", voice, "-s", str(rate), "-p", str(pitch), "--stdout", text],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    if proc.returncode != 0:
        raise DemoCorpusError(f"espeak-ng failed for voice {voice}: {proc.stderr.decode(errors='replace')}")
    wav = _pcm_from_wav(proc.stdout)
    x = resample_poly(wav.astype(np.float64) / 32768.0, SAMPLE_RATE // 50, ESPEAK_RATE // 50)  # 320/441
    loud = np.flatnonzero(np.abs(x) > 0.02 * np.abs(x).max())
    margin = int(0.03 * SAMPLE_RATE)
    return x[max(0, loud[0] - margin): loud[-1] + margin].astype(np.float32)


def _pcm_from_wav(data: bytes) -> np.ndarray:
    """int16 samples of espeak's streamed WAV (its RIFF/data sizes are placeholders, so read the data to the end)."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise DemoCorpusError("espeak-ng did not return a WAV stream")
    pos = 12
    while pos + 8 <= len(data):
        chunk, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        if chunk == b"fmt ":
            channels = int.from_bytes(data[pos + 10:pos + 12], "little")
            rate = int.from_bytes(data[pos + 12:pos + 16], "little")
            bits = int.from_bytes(data[pos + 22:pos + 24], "little")
            if (channels, rate, bits) != (1, ESPEAK_RATE, 16):
                raise DemoCorpusError(f"unexpected espeak-ng output format {channels} ch {rate} Hz {bits} bit")
        elif chunk == b"data":
            body = data[pos + 8:]
            return np.frombuffer(body[: len(body) // 2 * 2], dtype="<i2")
        pos += 8 + size + (size & 1)
    raise DemoCorpusError("espeak-ng WAV stream has no data chunk")


def _render(job: dict) -> Tuple[float, float]:
    """Synthesize one utterance, embed it in a noisy clip, write the FLAC; returns (start_second, end_second)."""
    rate = job["rate"]
    speech = synthesize(job["normalized_text"], job["voice"], rate, job["pitch"])
    while len(speech) > MAX_SPEECH_S * SAMPLE_RATE and rate < 400:  # too long: speak faster, deterministically
        rate += 30
        speech = synthesize(job["normalized_text"], job["voice"], rate, job["pitch"])
    speech = speech * (job["gain"] / max(1e-6, float(np.abs(speech).max())))
    n = max(len(speech), int(MIN_SPEECH_S * SAMPLE_RATE))
    n = -(-n // PAD_STEP) * PAD_STEP
    pre, post = job["pre_steps"] * PAD_STEP, job["post_steps"] * PAD_STEP
    clip = np.zeros(pre + n + post, dtype=np.float64)
    clip[pre:pre + len(speech)] = speech
    clip += np.random.default_rng(job["noise_seed"]).normal(0.0, job["noise"], len(clip))
    pcm = np.clip(np.round(clip * 32767.0), -32768, 32767).astype(np.int16)
    sf.write(job["path"], pcm, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return pre / SAMPLE_RATE, (pre + n) / SAMPLE_RATE


def _plan_split(split: str, n: int, first_index: int, rng: np.random.Generator, prosody: float = 0.0) -> List[dict]:
    labels = [lab for lab, k in label_plan(n, PROPORTIONS[split]).items() for _ in range(k)]
    labels = [labels[i] for i in rng.permutation(len(labels))]
    rows = []
    for i, label in enumerate(labels):
        spk = int(rng.integers(len(SPEAKERS)))
        voice, base_pitch = SPEAKERS[spk]
        video = "".join(ALPHABET[j] for j in rng.integers(len(ALPHABET), size=11))
        d_pitch, d_rate = (prosody * x for x in PROSODY[label])
        rows.append({
            "id": f"id9{spk:04d}_{video}_{first_index + i:05d}", "speaker_id": f"id9{spk:04d}", "split": split,
            "sentiment": label, "normalized_text": make_sentence(label, rng), "voice": voice,
            "rate": int(rng.integers(RATES_WPM[0], RATES_WPM[1] + 1) + round(d_rate)),
            "pitch": int(np.clip(base_pitch + rng.integers(-8, 9) + round(d_pitch), 0, 99)),
            "gain": float(rng.uniform(0.3, 0.8)), "noise": float(rng.uniform(0.001, 0.004)),
            "pre_steps": int(rng.integers(20, 81)), "post_steps": int(rng.integers(20, 81)),
            "noise_seed": [int(x) for x in rng.integers(2 ** 31, size=2)],
        })
    return rows


def make_demo_corpus(out_dir: str, seed: int = 0, n_fine_tune: int = 240, n_dev: int = 80, n_test: int = 40,
                     workers: Optional[int] = None, overwrite: bool = False, prosody: float = 0.0) -> Dict[str, int]:
    """Write the corpus to out_dir (built beside it, then renamed into place); returns {split: utterances}."""
    espeak_binary()
    sizes = {"fine-tune": n_fine_tune, "dev": n_dev, "test": n_test}
    if min(sizes.values()) < 1:
        raise DemoCorpusError(f"every split needs at least one utterance, got {sizes}")
    out_dir = os.path.abspath(out_dir)
    if os.path.lexists(out_dir) and not overwrite:
        raise DemoCorpusError(f"{out_dir} already exists; pass --overwrite to replace it")
    rng = np.random.default_rng(seed)
    plans, first = {}, 0
    for split, n in sizes.items():
        plans[split] = _plan_split(split, n, first, rng, prosody)
        first += n
    tmp = f"{out_dir}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        jobs = []
        for split, rows in plans.items():
            os.makedirs(os.path.join(tmp, f"{split}_raw"))
            for r in rows:
                r["path"] = os.path.join(tmp, f"{split}_raw", f"{r['id']}.flac")
                jobs.append(r)
        # espeak-ng runs as a subprocess, so threads keep every core busy without pickling anything.
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            times = list(pool.map(_render, jobs))
        for r, (start, end) in zip(jobs, times):
            r["start_second"], r["end_second"] = f"{start:.2f}", f"{end:.2f}"
        labelled = ["id", "normalized_text", "speaker_id", "split", "sentiment", "start_second", "end_second"]
        for split, rows in plans.items():
            name = LABELLED_TSVS.get(split, "slue-voxceleb_test_blind.tsv")
            cols = labelled if split in LABELLED_TSVS else ["id", "speaker_id", "split", "start_second",
                                                            "end_second"]
            with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
                f.write("\t".join(cols) + "\n")
                for r in rows:
                    f.write("\t".join(str(r[c]) for c in cols) + "\n")
        publish(tmp, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {split: len(rows) for split, rows in plans.items()}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="xmodal-make-demo-corpus", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder to write (SLUE-VoxCeleb layout)")
    p.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default 0)")
    p.add_argument("--n-fine-tune", type=int, default=240, help="fine-tune utterances (default 240)")
    p.add_argument("--n-dev", type=int, default=80, help="dev utterances (default 80)")
    p.add_argument("--n-test", type=int, default=40, help="blind test utterances (default 40)")
    p.add_argument("--workers", type=int, default=os.cpu_count(),
                   help="parallel espeak-ng processes (default: all cores)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--prosody", type=float, default=0.0,
                   help="strength of sentiment prosody (1 = Positive +10 pitch/+25 wpm, Negative -10/-25; default 0)")
    console.add_verbose(p)
    args = p.parse_args(argv)
    console.configure(args.verbose)
    try:
        counts = make_demo_corpus(args.out, args.seed, args.n_fine_tune, args.n_dev, args.n_test, args.workers,
                                  args.overwrite, args.prosody)
    except DemoCorpusError as e:
        print(f"xmodal-make-demo-corpus: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: " + ", ".join(f"{s} {n}" for s, n in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
