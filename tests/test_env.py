import http.server
import os
import subprocess
import sys
import threading
import time

import pytest

from ftkit import env


def test_probe_of_a_closed_port_says_unreachable():
    assert env._probe("http://127.0.0.1:9/", timeout=1.0) is False


def test_probe_gives_up_on_a_server_that_never_answers():
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts the TCP connection but never sends a byte
    start = time.monotonic()
    assert env._probe(f"http://127.0.0.1:{silent.getsockname()[1]}/", timeout=0.5) is False
    assert time.monotonic() - start < 5  # a hang guard, not a benchmark
    silent.close()


def test_probe_of_a_live_server_says_reachable():
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.handle_request, daemon=True).start()
    try:
        assert env._probe(f"http://127.0.0.1:{server.server_port}/", timeout=2.0) is True
    finally:
        server.server_close()


def test_unreachable_hub_switches_hugging_face_to_offline(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(env, "hub_reachable", lambda timeout=1.5: False)
    assert env.ensure_offline_mode() is True
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["HF_DATASETS_OFFLINE"] == "1"


def test_an_explicit_hf_hub_offline_wins(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(env, "hub_reachable", lambda timeout=1.5: pytest.fail("must not probe"))
    assert env.ensure_offline_mode() is False


def test_import_ftkit_is_light_and_sets_offline_mode_here():
    code = ("import sys, os, ftkit; print('torch' in sys.modules, 'transformers' in sys.modules, "
            "os.environ.get('HF_HUB_OFFLINE'))")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "FTKIT_HUB", "TRANSFORMERS_"))}
    out = subprocess.run([sys.executable, "-c", code], env=clean, capture_output=True, text=True, timeout=60)
    torch_loaded, transformers_loaded, offline = out.stdout.split()
    assert (torch_loaded, transformers_loaded) == ("False", "False")
    # This machine cannot reach the Hub, so the probe must have switched offline mode on.
    assert offline == ("1" if not env._probe(env.HUB_URL, 1.5) else "None")


@pytest.mark.parametrize("name", ["smoke", "cpu", "gpu"])
def test_every_profile_has_every_role_and_sane_sizes(name):
    p = env.get_profile(name)
    assert set(p.models) == {"encoder", "sentence", "causal", "judge"}
    assert p.batch_size > 0 and p.max_length >= 32 and p.epochs > 0


def test_profile_override_and_bad_value(monkeypatch):
    monkeypatch.setenv("FTKIT_PROFILE", "cpu")
    assert env.choose_profile() == "cpu"
    monkeypatch.setenv("FTKIT_PROFILE", "laptop")
    with pytest.raises(ValueError, match="FTKIT_PROFILE='laptop' is not a profile"):
        env.choose_profile()


def test_setup_seeds_and_reports(cfg, capsys):
    import torch

    import ftkit

    ftkit.setup("smoke", seed=7)
    a = torch.rand(3)
    ftkit.setup("smoke", seed=7)
    assert torch.equal(a, torch.rand(3))
    out = capsys.readouterr().out
    assert "profile=smoke" in out and "transformers=" in out
    assert cfg.batch_size == env.PROFILES["smoke"].batch_size  # reads through to the profile


def test_setup_object_can_be_copied(cfg):
    import copy

    clone = copy.deepcopy(cfg)
    assert clone.batch_size == cfg.batch_size and clone.profile.name == "smoke"


def test_memory_limit_reads_cgroup_v2_and_v1(tmp_path):
    v2, v1 = tmp_path / "memory.max", tmp_path / "memory.limit_in_bytes"
    v2.write_text("2147483648\n")
    assert env.cgroup_limit_mb([str(v2)]) == 2048
    v2.write_text("max\n")
    assert env.cgroup_limit_mb([str(v2)]) is None
    v1.write_text(str(2**63 - 4096))                     # v1's "no limit"
    assert env.cgroup_limit_mb([str(tmp_path / "absent"), str(v1)]) is None
    v1.write_text(str(1800 * 2**20))
    assert env.cgroup_limit_mb([str(tmp_path / "absent"), str(v1)]) == 1800


def test_memory_limit_is_the_smaller_of_cgroup_and_available(tmp_path, monkeypatch):
    import psutil

    monkeypatch.delenv("FTKIT_MEMORY_LIMIT", raising=False)
    v2 = tmp_path / "memory.max"
    v2.write_text(str(2 * 2**30))
    assert env.memory_limit_mb([str(v2)]) == min(2048, psutil.virtual_memory().available / 2**20)
    monkeypatch.setenv("FTKIT_MEMORY_LIMIT", "1800M")
    assert env.memory_limit_mb([str(v2)]) == 1800
    monkeypatch.setenv("FTKIT_MEMORY_LIMIT", "two gigs")
    with pytest.raises(ValueError, match="write it like 2G or 1800M"):
        env.memory_limit_mb()


def test_setup_reports_the_memory_and_flags_a_small_machine(monkeypatch, capsys):
    monkeypatch.setenv("FTKIT_MEMORY_LIMIT", "2G")
    cfg = env.setup("smoke")
    assert cfg.memory_limit_mb == 2048 and cfg.small_memory
    assert "memory=2.0 GB (small" in capsys.readouterr().out
    monkeypatch.setenv("FTKIT_MEMORY_LIMIT", "16G")
    assert not env.setup("smoke", verbose=False).small_memory


def test_one_switch_reruns_every_sweep_live(monkeypatch, capsys):
    monkeypatch.delenv("FTKIT_LIVE", raising=False)
    assert env.setup("smoke", verbose=False).live is False
    monkeypatch.setenv("FTKIT_LIVE", "1")
    cfg = env.setup("smoke")
    assert cfg.live is True and "live (every sweep is trained here" in capsys.readouterr().out
    assert env.setup("smoke", verbose=False, live=False).live is False          # the argument wins
    monkeypatch.setenv("FTKIT_LIVE", "off")
    assert env.setup("smoke", verbose=False).live is False
    assert env.setup("smoke", verbose=False, live=True).live is True
    monkeypatch.setenv("FTKIT_LIVE", "maybe")
    with pytest.raises(ValueError, match="FTKIT_LIVE='maybe' is neither on nor off; use 1 or 0"):
        env.setup("smoke", verbose=False)


def test_quiet_logs_turns_datasets_progress_bars_off():
    import datasets

    datasets.enable_progress_bars()
    env.quiet_logs()
    assert not datasets.is_progress_bar_enabled()


def test_the_gpu_profiles_language_models_are_instruct_models():
    """Sessions 00, 05 and 07 ask the causal model questions in its chat template; a base model has none."""
    gpu = env.PROFILES["gpu"]
    assert gpu.models["causal"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert all(name.endswith("-Instruct") for name in (gpu.models["judge"], gpu.extra["large_causal"]))
