"""Shared harness for the benchmarks: our SpeechT5 classifier and HF transformers' SpeechT5 with the same weights,
the same inputs and the same dtype, plus peak-memory and timing helpers that work on CPU and CUDA.

HF harness (speecht5.md §6.1): SpeechT5Model(cfg, encoder=SpeechT5EncoderWithSpeechPrenet(cfg),
decoder=SpeechT5DecoderWithoutPrenet(cfg)), decoder_input_values = zeros [B,1,H], class logits = a bias-free linear
head (our head's weight) over last_hidden_state[:, 0]. Weights are copied with fairseq_xmodal.models.hf.to_hf_key.
"""
import gc
import json
import os
import platform
import subprocess
import sys
import time
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn as nn

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

SAMPLE_RATE = 16000
NUM_CLASSES = 3
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def preload():
    """Import everything the workers need (no torch op runs), so forked workers start without import time."""
    import fairseq_xmodal.models.official  # noqa: F401
    import fairseq_xmodal.models.speecht5  # noqa: F401
    from fairseq.data import data_utils  # noqa: F401
    from torch.profiler import profile  # noqa: F401
    from transformers.models.speecht5 import modeling_speecht5  # noqa: F401


def our_config(size: str = "base", dropout: float = 0.0, checkpoint_activations: bool = False):
    """Base (speecht5_base dims) or tiny; layerdrop and masking off so both implementations run the same graph."""
    from fairseq_xmodal.models.speecht5 import SpeechT5Config, SpeechT5TinyConfig

    cls = {"base": SpeechT5Config, "tiny": SpeechT5TinyConfig}[size]
    return cls(dropout=dropout, attention_dropout=dropout, activation_dropout=dropout, encoder_layerdrop=0.0,
               decoder_layerdrop=0.0, mask_prob=0.0, checkpoint_activations=checkpoint_activations)


def build_ours(cfg, seed: int = 0):
    from fairseq_xmodal.models.speecht5 import SpeechT5Classifier

    torch.manual_seed(seed)
    return SpeechT5Classifier(cfg, text_vocab_size=81, text_padding_idx=1, num_classes=NUM_CLASSES)


class HFClassifier(nn.Module):
    """HF SpeechT5 encoder-with-speech-prenet + decoder-without-prenet + a bias-free linear head."""

    def __init__(self, ours, cfg):
        super().__init__()
        from transformers import SpeechT5Config as HFConfig
        from transformers import SpeechT5Model
        from transformers.models.speecht5.modeling_speecht5 import (SpeechT5DecoderWithoutPrenet,
                                                                    SpeechT5EncoderWithSpeechPrenet)

        from fairseq_xmodal.models.conv_spec import parse_conv_layers
        from fairseq_xmodal.models.hf import to_hf_key

        layers = parse_conv_layers(cfg.conv_feature_layers)
        hf_cfg = HFConfig(
            vocab_size=81, hidden_size=cfg.encoder_embed_dim, encoder_layers=cfg.encoder_layers,
            encoder_attention_heads=cfg.encoder_attention_heads, encoder_ffn_dim=cfg.encoder_ffn_embed_dim,
            decoder_layers=cfg.decoder_layers, decoder_attention_heads=cfg.decoder_attention_heads,
            decoder_ffn_dim=cfg.decoder_ffn_embed_dim, encoder_layerdrop=0.0, decoder_layerdrop=0.0,
            hidden_dropout=cfg.dropout, attention_dropout=cfg.attention_dropout,
            activation_dropout=cfg.activation_dropout, feat_proj_dropout=cfg.dropout, positional_dropout=cfg.dropout,
            conv_dim=[d for d, _, _ in layers], conv_kernel=[k for _, k, _ in layers],
            conv_stride=[s for _, _, s in layers], num_conv_pos_embeddings=cfg.conv_pos,
            num_conv_pos_embedding_groups=cfg.conv_pos_groups, mask_time_prob=0.0, mask_feature_prob=0.0,
            encoder_max_relative_position=cfg.max_relative_position, max_speech_positions=4000,
        )
        self.model = SpeechT5Model(hf_cfg, encoder=SpeechT5EncoderWithSpeechPrenet(hf_cfg),
                                   decoder=SpeechT5DecoderWithoutPrenet(hf_cfg))
        self.head = nn.Linear(cfg.encoder_embed_dim, NUM_CLASSES, bias=False)
        hf_keys = set(self.model.state_dict())
        mapped = {}
        for key, value in ours.state_dict().items():
            hf_key = to_hf_key(key)
            if hf_key in hf_keys:  # HF builds no text prenet and no masked_spec_embed here
                mapped[hf_key] = value
        missing, unexpected = self.model.load_state_dict(mapped, strict=False)
        own = dict(self.model.named_parameters())
        not_loaded = [k for k in missing if k in own]
        if not_loaded or unexpected:
            raise RuntimeError(f"HF weight mapping incomplete: missing {not_loaded[:8]}, unexpected {unexpected[:8]}")
        with torch.no_grad():
            self.head.weight.copy_(ours.speaker_decoder_postnet.output_projection.weight)

    def forward(self, source, padding_mask=None):
        mask = None if padding_mask is None else (~padding_mask).long()
        zeros = source.new_zeros(source.size(0), 1, self.model.config.hidden_size)
        out = self.model(input_values=source, attention_mask=mask, decoder_input_values=zeros)
        return self.head(out.last_hidden_state[:, 0])


def build(impl: str, size: str = "base", dropout: float = 0.0, checkpoint_activations: bool = False,
          device: str = "cpu", dtype: str = "fp32"):
    """-> a module mapping (source [B,S], padding_mask [B,S] True=pad) to logits [B,C]; same weights for both impls."""
    ours = build_ours(our_config(size, dropout, checkpoint_activations))
    if impl == "ours":
        model = ours
    elif impl == "hf":
        model = HFClassifier(ours, ours.cfg)
        del ours
    else:
        raise ValueError(impl)
    gc.collect()
    return model.to(device=device, dtype=DTYPES[dtype])


def synthetic_batch(lengths, device="cpu", dtype=torch.float32, seed=0):
    """Right-padded noise waveforms [B,S] + padding mask (True = pad)."""
    g = torch.Generator().manual_seed(seed)
    longest = max(lengths)
    source = torch.zeros(len(lengths), longest)
    pad = torch.ones(len(lengths), longest, dtype=torch.bool)
    for i, n in enumerate(lengths):
        source[i, :n] = 0.1 * torch.randn(n, generator=g)
        pad[i, :n] = False
    return source.to(device=device, dtype=dtype), pad.to(device)


# --------------------------------------------------------------------------------------------------------------
# Peak memory and time


def _proc_status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


class PeakMemory:
    """Peak of live tensor memory in a code region above its starting level, in MiB.
    CUDA: torch.cuda.max_memory_allocated (after reset_peak_memory_stats).
    CPU: every allocation and free of PyTorch's CPU allocator, recorded by torch.profiler (profile_memory=True) and
    summed in time order. This counts tensors only (not allocator caching or fragmentation), like the CUDA figure.
    `rss_mib` is the process's resident-set high-water mark over the region (VmHWM, reset through
    /proc/self/clear_refs), for reference: it includes glibc's cached free memory."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.rss_mib = None

    def __enter__(self):
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            return self
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.rss_start = _proc_status_kib("VmRSS")
        except OSError:
            self.rss_start = None
        from torch.profiler import ProfilerActivity, profile

        self.prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self.prof.__enter__()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.mib = (torch.cuda.max_memory_allocated() - self.start) / 2 ** 20
            return False
        self.prof.__exit__(*exc)
        if self.rss_start is not None:
            self.rss_mib = (_proc_status_kib("VmHWM") - self.rss_start) / 1024
        events = sorted((e.start_ns(), e.nbytes()) for e in self.prof.profiler.kineto_results.events()
                        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
        live = peak = 0
        for _, nbytes in events:
            live += nbytes
            peak = max(peak, live)
        self.mib = peak / 2 ** 20
        self.prof = None
        return False


def release_cached_memory(device: str):
    """Between two measured regions of one process: give freed heap memory back to the OS and stop glibc from raising
    its mmap threshold (it keeps freed blocks of up to 32 MiB in the heap otherwise), so that RSS follows live tensors
    and a later PeakMemory region is not flattered by memory the process already holds."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD: fixed, large blocks always mmap'd (freed at once)
        libc.malloc_trim(0)
    except OSError:
        pass


@contextmanager
def timer(device: str, out: list):
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    yield
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    out.append(time.perf_counter() - t)


def machine_info() -> dict:
    info = {"torch": torch.__version__, "python": platform.python_version()}  # no torch op: the launcher forks
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        info["cpu"] = fields.get("Model name", "?").strip()
        info["cpus"] = fields.get("CPU(s)", "?").strip()
    except OSError:
        info["cpu"] = platform.processor()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def run_worker(module: str, args: list, spawn: bool = False, timeout: float = 1200, quiet: bool = True) -> dict:
    """Run `<module>.main(args)` in its own process and return its result dict.

    Default: a child forked from the launcher, which has imported the libraries but never run a model, so nothing
    measured in one configuration can leak into another and the ~8 s of imports are paid once. spawn=True (or no
    os.fork): a fresh interpreter, `python -m <module> <args>`, whose last JSON stdout line is the result."""
    args = [str(x) for x in args]
    if not spawn and hasattr(os, "fork"):
        import multiprocessing
        import traceback

        ctx = multiprocessing.get_context("fork")
        receive, send = ctx.Pipe(duplex=False)

        def child():
            if quiet:  # library warnings and profiler chatter; errors come back through the pipe
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 1)
                os.dup2(devnull, 2)
            try:
                import importlib

                send.send({"ok": importlib.import_module(module).main(args)})
            except BaseException:
                send.send({"error": traceback.format_exc()})

        proc = ctx.Process(target=child)
        proc.start()
        send.close()
        try:
            if not receive.poll(timeout):
                proc.kill()
                raise RuntimeError(f"worker {module} {args} timed out after {timeout} s")
            message = receive.recv()
        except EOFError:
            message = {"error": f"worker died (exit code {proc.join() or proc.exitcode})"}
        proc.join()
        if "error" in message:
            raise RuntimeError(f"worker {module} {args} failed:\n{message['error']}")
        return message["ok"]
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {module} {args} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"worker {module} {args} printed no JSON:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1])


def slue_like_lengths(n: int, mean_s: float = 8.0, sigma: float = 0.5, seed: int = 0, min_s: float = 1.0,
                      max_s: float = 40.0):
    """Seeded lognormal utterance lengths in samples, rescaled to a mean of `mean_s` seconds (SLUE-VoxCeleb ~8 s)."""
    rng = np.random.default_rng(seed)
    x = rng.lognormal(mean=0.0, sigma=sigma, size=n)
    x = np.clip(x / x.mean() * mean_s, min_s, max_s)
    return [int(s * SAMPLE_RATE) for s in x]
