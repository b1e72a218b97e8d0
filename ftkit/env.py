"""Where am I running? Offline detection, run profiles and the one-call notebook set-up.

This module must stay importable without torch or transformers: `import ftkit` runs
`ensure_offline_mode()` before anything from Hugging Face is imported.
"""
from __future__ import annotations

import os
import random
import sys
import threading
import urllib.request
from dataclasses import dataclass, field, replace

HUB_URL = "https://huggingface.co"
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
_TRUE = {"1", "true", "yes", "on"}


# --------------------------------------------------------------------------- offline detection
def _probe(url: str, timeout: float) -> bool:
    """True when any HTTP answer comes back from `url` within `timeout` seconds.

    urllib honours HTTPS_PROXY, but name resolution cannot be given a timeout, so the
    request runs in a daemon thread and we stop waiting for it after `timeout` seconds.
    """
    answer: list[bool] = []

    def attempt():
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout)
            answer.append(True)
        except urllib.error.HTTPError:  # an HTTP error status still proves the Hub is reachable
            answer.append(True)
        except Exception:
            answer.append(False)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(answer and answer[0])


def hub_reachable(timeout: float = 1.5) -> bool:
    """Probe the Hugging Face Hub once per process tree (the answer is kept in FTKIT_HUB_REACHABLE)."""
    cached = os.environ.get("FTKIT_HUB_REACHABLE")
    if cached in ("0", "1"):
        return cached == "1"
    reachable = _probe(HUB_URL, timeout)
    os.environ["FTKIT_HUB_REACHABLE"] = "1" if reachable else "0"
    return reachable


def is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUE


def ensure_offline_mode() -> bool:
    """Switch Hugging Face libraries to offline mode when the Hub cannot be reached.

    Without this, a Hub load on a closed network retries for 23-73 s before it fails.
    Returns True when offline mode is on. A user's explicit HF_HUB_OFFLINE always wins.
    """
    if "HF_HUB_OFFLINE" in os.environ:
        return is_offline()
    if hub_reachable():
        return False
    for var in _OFFLINE_VARS:
        os.environ[var] = "1"
    hub = sys.modules.get("huggingface_hub.constants")
    if hub is not None:  # already imported by the user: its constant was read at import time
        hub.HF_HUB_OFFLINE = True
    return True


# --------------------------------------------------------------------------- run profiles
@dataclass(frozen=True)
class Profile:
    """Everything that changes between a CI smoke run, a laptop and a Colab GPU."""

    name: str
    models: dict  # role -> model id or the word "packaged"
    train_size: int | None  # examples per training split (None = all)
    eval_size: int | None  # examples per evaluation split (None = all)
    epochs: float
    max_steps: int  # -1 = run the epochs
    batch_size: int
    max_length: int
    learning_rate: float = 5e-5
    extra: dict = field(default_factory=dict)

    def with_(self, **changes) -> "Profile":
        return replace(self, **changes)


ONLINE_MODELS = {
    "encoder": "distilbert-base-uncased",  # has its masked-LM head, unlike the packaged MiniLM
    "sentence": "sentence-transformers/all-MiniLM-L6-v2",
    "causal": "HuggingFaceTB/SmolLM2-135M-Instruct",  # sessions 00, 05 and 07 ask it questions in its chat template
    "judge": "HuggingFaceTB/SmolLM2-1.7B-Instruct",  # an LLM judge needs to be much stronger than what it grades
}
# Offline the only packaged LM is the 135M instruct model, so it is also the judge (session 05 measures how
# far that can be trusted).
PACKAGED = {"encoder": "packaged", "sentence": "packaged", "causal": "packaged", "judge": "packaged"}

PROFILES = {
    "smoke": Profile("smoke", PACKAGED, train_size=64, eval_size=64, epochs=1, max_steps=8,
                     batch_size=16, max_length=48, learning_rate=1e-4),
    "cpu": Profile("cpu", PACKAGED, train_size=2000, eval_size=None, epochs=2, max_steps=-1,
                   batch_size=32, max_length=64, learning_rate=5e-5),
    "gpu": Profile("gpu", ONLINE_MODELS, train_size=None, eval_size=None, epochs=3, max_steps=-1,
                   batch_size=32, max_length=128, learning_rate=5e-5,
                   # session 07's "small vs large": the same comparisons for a larger instruct model
                   extra={"large_causal": "HuggingFaceTB/SmolLM2-360M-Instruct"}),
}


def has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def choose_profile() -> str:
    """FTKIT_PROFILE wins; CI and pytest get smoke; a CUDA GPU gets gpu; everything else cpu."""
    wanted = os.environ.get("FTKIT_PROFILE", "").strip().lower()
    if wanted:
        if wanted not in PROFILES:
            raise ValueError(f"FTKIT_PROFILE={wanted!r} is not a profile; use one of {sorted(PROFILES)}")
        return wanted
    if os.environ.get("CI", "").lower() in _TRUE or "PYTEST_CURRENT_TEST" in os.environ:
        return "smoke"
    return "gpu" if has_cuda() else "cpu"


def get_profile(name: str | None = None) -> Profile:
    name = name or choose_profile()
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; use one of {sorted(PROFILES)}")
    return PROFILES[name]


# --------------------------------------------------------------------------- notebook set-up
@dataclass
class Setup:
    """What `ftkit.setup()` found; notebooks read `cfg.profile`, `cfg.device` and friends."""

    profile: Profile
    device: str
    offline: bool
    seed: int
    in_colab: bool
    memory_limit_mb: float | None = None  # what this process may use: the cgroup limit or the available RAM
    live: bool = False  # train every sweep now instead of drawing its recording (see ftkit.results.sweep_rows)

    @property
    def small_memory(self) -> bool:
        """Under about 3 GB (Binder gives 2 GB): notebooks pick their memory levers from this."""
        return self.memory_limit_mb is not None and self.memory_limit_mb < SMALL_MEMORY_MB

    def __getattr__(self, item):  # cfg.batch_size reads through to the profile
        if item.startswith("__") or item == "profile":  # copy/pickle probe these before __init__ ran
            raise AttributeError(item)
        return getattr(self.profile, item)

    def model(self, role: str) -> str:
        from .models import resolve

        return resolve(role, self)


def in_colab() -> bool:
    return "google.colab" in sys.modules


def seed_everything(seed: int) -> None:
    random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:
        pass
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:
        pass


def quiet_logs() -> None:
    """Keep the notebook readable: warnings that a learner cannot act on are hidden.

    `datasets` progress bars are off too: on the course's data (a few thousand rows at most) each one is done in a
    second or so and leaves a line behind (measured: tokenizing 4,132 rotten_tomatoes rows in the cpu profile, 3 s
    for three splits). The Trainer's bar, the sign of life during a long training, stays."""
    import logging
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    for name in ("transformers", "datasets", "evaluate", "sentence_transformers", "setfit",
                 "huggingface_hub", "peft", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    except ImportError:
        pass
    try:
        import datasets

        datasets.disable_progress_bars()        # datasets.enable_progress_bars() brings them back
    except ImportError:
        pass


def library_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    names = ["torch", "transformers", "datasets", "evaluate", "peft", "setfit",
             "sentence-transformers", "ipywidgets", "plotly"]
    out = {"python": sys.version.split()[0]}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "missing"
    return out


SMALL_MEMORY_MB = 3 * 1024
_CGROUP_FILES = ("/sys/fs/cgroup/memory.max",                      # cgroup v2
                 "/sys/fs/cgroup/memory/memory.limit_in_bytes")     # cgroup v1


def is_small() -> bool:
    """Is this machine under SMALL_MEMORY_MB, as `cfg.small_memory` says? For helpers that get no `cfg`."""
    limit_mb = memory_limit_mb()
    return limit_mb is not None and limit_mb < SMALL_MEMORY_MB


def cgroup_limit_mb(paths=_CGROUP_FILES) -> float | None:
    """The container's memory limit in MB, or None when there is none ("max", or v1's huge sentinel)."""
    for path in paths:
        try:
            text = open(path).read().strip()
        except OSError:
            continue
        if text == "max" or not text.isdigit():
            return None
        value = int(text)
        return None if value >= 2**60 else value / 2**20     # v1 writes ~2**63 for "no limit"
    return None


def size_mb(text: str, what: str = "size") -> float:
    """"2G", "1800M", "512K" or plain bytes, in MB."""
    wanted = text.strip().upper()
    units = {"G": 1024, "M": 1, "K": 1 / 1024}
    try:
        return float(wanted[:-1]) * units[wanted[-1]] if wanted[-1:] in units else float(wanted) / 2**20
    except ValueError:
        raise ValueError(f"{what}={wanted!r} is not a size; write it like 2G or 1800M") from None


def memory_limit_mb(paths=_CGROUP_FILES) -> float | None:
    """What this kernel may use: FTKIT_MEMORY_LIMIT (e.g. "2G", "1800M") if set, else the smaller of the cgroup
    limit and the RAM available now."""
    wanted = os.environ.get("FTKIT_MEMORY_LIMIT", "").strip()
    if wanted:
        return size_mb(wanted, "FTKIT_MEMORY_LIMIT")
    limits = [cgroup_limit_mb(paths)]
    try:
        import psutil

        limits.append(psutil.virtual_memory().available / 2**20)
    except ImportError:
        pass
    limits = [x for x in limits if x is not None]
    return min(limits) if limits else None


def live_switch(live: bool | None = None) -> bool:
    """`live` if given, else the FTKIT_LIVE environment variable (1/true/yes/on or 0/false/no/off; unset: off)."""
    if live is not None:
        return bool(live)
    text = os.environ.get("FTKIT_LIVE", "").strip().lower()
    if text and text not in _TRUE | {"0", "false", "no", "off"}:
        raise ValueError(f"FTKIT_LIVE={text!r} is neither on nor off; use 1 or 0")
    return text in _TRUE


def setup(profile: str | None = None, seed: int = 42, verbose: bool = True, live: bool | None = None) -> Setup:
    """The first call of every notebook: profile, device, offline state, seeds, quiet logs, widgets.

    `live=True` (or FTKIT_LIVE=1) trains every sweep a notebook would otherwise draw from its recording
    (`ftkit.results.sweep_rows`); None reads FTKIT_LIVE."""
    offline = ensure_offline_mode()
    prof = get_profile(profile)
    live = live_switch(live)
    quiet_logs()
    seed_everything(seed)
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    colab = in_colab()
    if colab:
        from google.colab import output  # type: ignore

        output.enable_custom_widget_manager()  # ipywidgets 8 needs it in Colab
    cfg = Setup(prof, device, offline, seed, colab, memory_limit_mb(), live)
    if verbose:
        versions = " ".join(f"{k}={v}" for k, v in library_versions().items())
        memory = "unknown" if cfg.memory_limit_mb is None else f"{cfg.memory_limit_mb / 1024:.1f} GB"
        print(f"ftkit profile={prof.name} device={device} offline={offline} seed={seed} memory={memory}"
              + (" (small: training runs in micro-batches of 8 and the notebooks use their memory-saving settings)"
                 if cfg.small_memory else "")
              + (" live (every sweep is trained here, none is read from its recording)" if cfg.live else ""))
        print(f"versions: {versions}")
    return cfg
