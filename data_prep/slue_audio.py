"""The audio pass of `xmodal-prepare-slue`: cut every utterance out of its raw clip, on worker processes that die
with the parent (process_control), with progress lines that show in Slurm logs."""
import datetime
import io
import multiprocessing
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import pandas as pd
import soundfile as sf

from .process_control import worker_init

SAMPLE_RATE = 16000

# ---------------------------------------------------------------------------------------------------------------
# Audio
# ---------------------------------------------------------------------------------------------------------------

def _audio_job(job: Tuple[str, Optional[str], float, float]) -> Tuple[Optional[int], Optional[str], Optional[str]]:
    """Cut [int(start*sr), int(end*sr)) of src into dst (FLAC 16-bit); dst None = src already is the utterance.

    Returns (samples written, None, None) or (None, reason, fix). Runs in a worker process.
    """
    src, dst, start_s, end_s = job
    if not os.path.isfile(src):
        return None, f"audio file {src} is missing", "restore the file from the release or remove the row"
    try:
        with sf.SoundFile(src) as f:
            if f.samplerate != SAMPLE_RATE or f.channels != 1:
                return None, (f"audio file {src} is {f.samplerate} Hz with {f.channels} channel(s), expected "
                              f"{SAMPLE_RATE} Hz mono"), "convert it to 16 kHz mono (e.g. sox in.flac -r 16000 -c 1)"
            if dst is None:
                if f.frames < 1:
                    return None, f"audio file {src} is empty", "re-segment the utterance or remove the row"
                return int(f.frames), None, None
            a, b = int(start_s * SAMPLE_RATE), int(end_s * SAMPLE_RATE)
            if b > f.frames + 1:  # one sample of slack for the rounding of end_second
                return None, (f"end_second={end_s} is beyond the end of {src} ({f.frames / SAMPLE_RATE:.4f} s)"), \
                    "correct end_second or restore the full raw clip"
            b = min(b, f.frames)
            if b <= a:
                return None, f"segment [{start_s}, {end_s}) is empty at {SAMPLE_RATE} Hz", "correct the times"
            f.seek(a)
            data = f.read(b - a, dtype="int16")  # int16 in and out: 16-bit sources are copied bit-exactly
    except RuntimeError as e:  # soundfile's LibsndfileError (corrupt/unsupported file) is a RuntimeError
        return None, f"audio file {src} is unreadable ({e})", "re-download or re-encode it"
    if len(data) != b - a:
        return None, f"audio file {src} is truncated (read {len(data)} of {b - a} samples)", "re-download it"
    # encoded in memory, then written with a plain file write: on a full disk libsndfile only says "problem with
    # initialization of the flac decoder" (no errno); the write raises OSError(ENOSPC) naming the file. Same bytes.
    flac = io.BytesIO()
    sf.write(flac, data, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    try:
        with open(dst, "wb") as f:
            f.write(flac.getvalue())
    except OSError as e:
        raise OSError(e.errno, e.strerror, dst) from None
    return len(data), None, None


def _run_audio_jobs(jobs: List[tuple], workers: int) -> List[tuple]:
    """Every job's result, in order. Workers die with this process (process_control.worker_init); on any exception
    here (SIGTERM/SIGINT arrive as process_control.Interrupted) the pool is terminated, not waited for."""
    from fairseq_xmodal.progress import progress

    if workers <= 1 or len(jobs) < 2:
        return list(progress(map(_audio_job, jobs), len(jobs), "audio pass", unit="utt"))
    pool = multiprocessing.Pool(processes=workers, initializer=worker_init)
    try:
        chunk = max(1, min(64, len(jobs) // (workers * 8)))
        results = list(progress(pool.imap(_audio_job, jobs, chunksize=chunk), len(jobs), "audio pass", unit="utt"))
        pool.close()
        return results
    finally:
        pool.terminate()
        pool.join()


@dataclass
class AudioPass:
    tables: Dict[str, pd.DataFrame]  # each split's rows with audio, with their n_samples
    roots: Dict[str, str]  # split -> audio root written into its .tsv
    utterances: int
    seconds: float


def audio_pass(tables: Dict[str, pd.DataFrame], sources: Dict[str, str], tmp: str, slue_dir: str,
               segmented_dir: Optional[str], workers: int, rejects, step) -> AudioPass:
    """One audio pass over every utterance of every split, in one pool (every core busy throughout): cut into
    `<tmp>/audio/<split>/<id>.flac`, or only measured with --segmented-dir. It runs even with bad rows (they are left
    out), so one run reports every bad row; then `rejects` raises unless --skip-bad."""
    jobs, owners = [], []
    for split, df in tables.items():
        if segmented_dir:
            srcs = [os.path.join(segmented_dir, split, f"{u}.flac") for u in df["id"]]
            dsts = [None] * len(df)
        else:
            os.makedirs(os.path.join(tmp, "audio", split))
            srcs = [os.path.join(slue_dir, f"{split}_raw", f"{u}.flac") for u in df["id"]]
            dsts = [os.path.join(tmp, "audio", split, f"{u}.flac") for u in df["id"]]
        jobs += list(zip(srcs, dsts, df["start"], df["end"]))
        owners += [(split, i) for i in range(len(df))]
    t0 = datetime.datetime.now()
    results = _run_audio_jobs(jobs, workers)
    seconds = (datetime.datetime.now() - t0).total_seconds()
    sizes = {s: np.zeros(len(df), dtype=np.int64) for s, df in tables.items()}
    for (split, i), (n, reason, fix) in zip(owners, results):
        if reason is None:
            sizes[split][i] = n
            continue
        row = tables[split].iloc[i]
        rejects.add(split, sources[split], int(row["line"]), row["id"], reason, fix)
    rejects.raise_if_any()
    kept, roots = {}, {}
    for split in list(tables):
        df = tables[split].assign(n_samples=sizes[split])
        kept[split] = df[df["n_samples"] > 0].reset_index(drop=True)
        step(split, "checked", kept[split])
        roots[split] = (os.path.abspath(os.path.join(segmented_dir, split)) if segmented_dir
                        else f"audio/{split}")  # relative: the folder can be moved as a whole
    return AudioPass(kept, roots, len(jobs), seconds)
