"""`ftkit doctor`: is this machine ready for the course? [OK]/[WARN]/[FAIL] per check, exit 1 on a FAIL."""
from __future__ import annotations

import os
import re
import shutil
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

REQUIRED = ["torch", "transformers", "datasets", "evaluate", "peft", "trl", "setfit", "sentence-transformers",
            "accelerate", "ipywidgets", "plotly", "scikit-learn", "seqeval", "rouge-score", "gguf"]
MIN_RAM_GB, MIN_DISK_GB = 1.5, 1.0
MIN_PYTHON = (3, 11)  # the pinned transformers, trl, numpy and pandas need it


def constraints_path() -> Path | None:
    """The constraints.txt to compare with: FTKIT_CONSTRAINTS, else a checkout's (next to the package), else the
    working folder's (where the Colab install cell downloads it)."""
    named = os.environ.get("FTKIT_CONSTRAINTS")
    for path in ([Path(named)] if named else []) + [Path(__file__).resolve().parent.parent / "constraints.txt",
                                                     Path.cwd() / "constraints.txt"]:
        if path.is_file():
            return path
    return None


def pinned_versions(path) -> dict:
    """{package: version} from the `name==version` lines of a pip constraints file."""
    pins = {}
    for line in Path(path).read_text().splitlines():
        m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s#;]+).*", line)
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


def version_differences(pins: dict) -> list[str]:
    """"name installed (tested: pinned)" for every pinned package installed in another version; packages that are
    not installed (optional extras such as playwright) are not compared. A local build tag (torch's +cpu, +cu121)
    is not a difference."""
    out = []
    for name, wanted in sorted(pins.items()):
        try:
            have = version(name)
        except PackageNotFoundError:
            continue
        if have.split("+")[0] != wanted.split("+")[0]:
            out.append(f"{name} {have} (tested: {wanted})")
    return out


def _versions_check():
    path = constraints_path()
    if path is None:
        return "versions", None, "constraints.txt not found: installed versions not compared with the tested ones"
    pins = pinned_versions(path)
    differ = version_differences(pins)
    if differ:
        return "versions", None, (f"{len(differ)} differ from {path.name}: {'; '.join(differ)}. The tested versions "
                                  f"install with pip's -c {path} (as `make install` and the Colab install cell do); "
                                  "restart the kernel after")
    return "versions", True, f"as tested ({path})"


def _checks(load_models: bool):
    from . import env, models

    python_ok = sys.version_info >= MIN_PYTHON
    yield "python", python_ok, sys.version.split()[0] + ("" if python_ok else " (the course needs Python >= 3.11)")
    for name in REQUIRED:
        try:
            yield name, True, version(name)
        except PackageNotFoundError:
            yield name, False, f"not installed: pip install -e . -c constraints.txt"
    yield _versions_check()
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
