"""`ftkit doctor`: is this machine ready for the course? [OK]/[WARN]/[FAIL] per check, exit 1 on a FAIL."""
from __future__ import annotations

import shutil
import sys
import time
from importlib.metadata import PackageNotFoundError, version

REQUIRED = ["torch", "transformers", "datasets", "evaluate", "peft", "setfit", "sentence-transformers",
            "accelerate", "ipywidgets", "plotly", "scikit-learn", "seqeval", "rouge-score", "gguf"]
MIN_RAM_GB, MIN_DISK_GB = 1.5, 1.0


def _checks(load_models: bool):
    from . import env, models

    yield "python", sys.version_info >= (3, 10), sys.version.split()[0]
    for name in REQUIRED:
        try:
            yield name, True, version(name)
        except PackageNotFoundError:
            yield name, False, f"not installed: pip install -e . -c constraints.txt"
    import psutil

    ram = psutil.virtual_memory().total / 2**30
    yield "RAM", ram >= MIN_RAM_GB, f"{ram:.1f} GB total"
    disk = shutil.disk_usage(models.cache_dir().parent if models.cache_dir().parent.exists() else ".").free / 2**30
    yield "disk", disk >= MIN_DISK_GB, f"{disk:.1f} GB free"
    reachable = env.hub_reachable()
    yield "Hub", None if not reachable else True, "reachable" if reachable else "unreachable: offline mode, packaged models"
    import torch

    device = "cuda: " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    yield "device", True, device
    yield "profile", True, env.choose_profile()
    try:
        path = models.packaged_minilm_path()
        yield "encoder/sentence (packaged)", (path / "model.safetensors").is_file(), str(path)
    except RuntimeError as err:
        yield "encoder/sentence (packaged)", False, str(err)
    try:
        gguf = models.packaged_gguf_path()
        cached = (models.causal_cache_path() / "model.safetensors").is_file()
        if cached:
            yield "causal (packaged)", True, f"converted cache at {models.causal_cache_path()}"
        else:
            yield "causal (packaged)", None, f"{gguf.name} found; run `python -m ftkit prepare` to convert it (30 s)"
    except RuntimeError as err:
        yield "causal (packaged)", False, str(err)
    if load_models:
        start = time.time()
        from transformers import AutoModel

        AutoModel.from_pretrained(models.packaged_minilm_path(), use_safetensors=True)
        yield "encoder loads", True, f"{time.time() - start:.1f} s"


def run(load_models: bool = True) -> int:
    """Print one line per check; return 1 if any check failed."""
    start, failed = time.time(), False
    for name, ok, detail in _checks(load_models):
        tag = "[OK]  " if ok else ("[WARN]" if ok is None else "[FAIL]")
        failed |= ok is False
        print(f"{tag} {name:<28} {detail}")
    print(f"{'FAILED' if failed else 'all checks passed'} in {time.time() - start:.1f} s")
    return 1 if failed else 0
