"""Recorded sweeps (provenance, settings checks, bands, the overlay figure), the one live switch, and Expected."""
import json
import math
import textwrap

import nbformat
import plotly.graph_objects as go
import pytest

from ftkit import results
from ftkit.__main__ import main as cli

FAKE_SWEEP = '''
CALLS = []
SETTINGS = {"ks": [4, 8], "seeds": [0, 1, 2]}


def settings(profile):
    return {**SETTINGS, "profile": profile.name}


def run(cfg):
    CALLS.append(cfg.profile.name)
    return [{"method": m, "K": k, "seed": s, "accuracy": base + 0.01 * k + 0.002 * s}
            for m, base in (("SetFit", 0.5), ("frozen", 0.45)) for k in SETTINGS["ks"] for s in SETTINGS["seeds"]]


def empty(cfg):
    return []


def broken(cfg):
    raise RuntimeError("killed halfway")
'''


@pytest.fixture()
def fake(tmp_path, monkeypatch):
    """A sweep registered by the test, its code in an importable module, and an empty recordings folder."""
    import importlib

    (tmp_path / "fake_sweep_code.py").write_text(FAKE_SWEEP)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("fake_sweep_code")
    module = importlib.reload(module)          # a fresh CALLS and SETTINGS for every test
    monkeypatch.setitem(results.SWEEPS, "fake", results.Sweep("fake_sweep_code:run", "fake_sweep_code:settings"))
    folder = tmp_path / "recorded"
    return module, folder


def test_a_recording_keeps_its_rows_and_provenance(cfg, fake):
    module, folder = fake
    path = results.record("fake", cfg, folder)
    assert path == folder / "fake.smoke.json" and module.CALLS == ["smoke"]
    saved = json.loads(path.read_text())
    p = saved["provenance"]
    assert p["profile"] == "smoke" and p["settings"] == {"ks": [4, 8], "seeds": [0, 1, 2], "profile": "smoke"}
    assert p["ftkit"] == "0.1.0" and p["date"][:2] == "20" and p["seconds"] >= 0
    assert p["machine"]["cores"] >= 1 and "memory limit MB" in p["machine"] and p["versions"]["torch"]
    assert p["git"] is None or len(p["git"]["commit"]) == 40
    rows = results.load_recorded("fake", module.settings(cfg.profile), "smoke", folder)
    assert rows == module.run(cfg) and rows.provenance == p and len(rows) == 12
    assert rows.summary().startswith("12 rows recorded on 20") and "smoke profile" in rows.summary()
    assert [f.name for f in folder.iterdir()] == ["fake.smoke.json"]        # no temporary file left behind
    assert len(p["load average (1, 5, 15 min)"]) == 3          # says whether other jobs shared the machine
    noted = results.Recorded(rows, {**p, "note": "recorded beside other jobs"})
    assert noted.summary().endswith("; recorded beside other jobs") and "note" not in rows.summary()


def test_the_code_version_flag_ignores_other_recordings(tmp_path):
    """A recording made while another one is new and uncommitted is still made by committed code."""
    import subprocess

    repo = tmp_path / "repo"
    (repo / "ftkit" / "recorded").mkdir(parents=True)
    (repo / "ftkit" / "code.py").write_text("x = 1\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-qm", "code"], check=True)
    (repo / "ftkit" / "recorded" / "other.cpu.json").write_text("{}")
    assert results._git_commit(repo)["uncommitted changes in ftkit/"] is False
    (repo / "ftkit" / "code.py").write_text("x = 2\n")
    assert results._git_commit(repo)["uncommitted changes in ftkit/"] is True


def test_a_failed_or_empty_sweep_leaves_the_old_recording_intact(cfg, fake):
    module, folder = fake
    path = results.record("fake", cfg, folder)
    before = path.read_text()
    for function, error in (("broken", RuntimeError), ("empty", ValueError)):
        results.SWEEPS["fake"] = results.Sweep(f"fake_sweep_code:{function}", "fake_sweep_code:settings")
        with pytest.raises(error):
            results.record("fake", cfg, folder)
        assert path.read_text() == before


def test_a_recording_made_with_other_settings_is_refused_naming_the_keys(cfg, fake):
    module, folder = fake
    results.record("fake", cfg, folder)
    changed = {**module.settings(cfg.profile), "seeds": [0, 1], "iterations": 10}
    with pytest.raises(ValueError, match=r"iterations: recorded \(absent\), code 10; seeds: recorded \[0, 1, 2\], "
                                         r"code \[0, 1\]\. Record it again \(`python -m ftkit record fake"):
        results.load_recorded("fake", changed, "smoke", folder)
    same_but_tuples = {**module.settings(cfg.profile), "ks": (4, 8)}          # JSON reads tuples back as lists
    assert len(results.load_recorded("fake", same_but_tuples, "smoke", folder)) == 12
    with pytest.raises(ValueError, match=r"no recorded sweep 'fake' for the cpu profile at .*fake\.cpu\.json"):
        results.load_recorded("fake", changed, "cpu", folder)
    with pytest.raises(ValueError, match=r"no sweep called 'nope'; registered sweeps: \[.*'fake'"):
        results.code_settings("nope", "smoke")


def test_one_switch_chooses_between_the_recording_and_a_live_run(cfg, fake, capsys):
    import dataclasses

    module, folder = fake
    rows = results.sweep_rows("fake", cfg, folder)                  # nothing recorded: trained now, and said so
    assert module.CALLS == ["smoke"] and rows.provenance["live"] and len(rows) == 12
    assert "No recorded sweep 'fake' for the smoke profile: training all of it now." in capsys.readouterr().out
    results.record("fake", cfg, folder)
    module.CALLS.clear()
    recorded = results.sweep_rows("fake", cfg, folder)
    assert module.CALLS == [] and "live" not in recorded.provenance and recorded == rows
    live = results.sweep_rows("fake", dataclasses.replace(cfg, live=True), folder)
    assert module.CALLS == ["smoke"] and live.provenance["live"] and live.summary().startswith("12 rows trained live")
    module.SETTINGS["seeds"] = [0]                                # the code changed after the recording
    with pytest.raises(ValueError, match=r"seeds: recorded \[0, 1, 2\], code \[0\]"):
        results.sweep_rows("fake", cfg, folder)


def test_the_ci_check_finds_recordings_the_code_would_not_reproduce(cfg, fake):
    module, folder = fake
    results.record("fake", cfg, folder)
    assert results.recording_problems(folder) == []
    results.assert_recordings_match_code(folder)
    module.SETTINGS["ks"] = [4, 8, 16]
    (folder / "gone.cpu.json").write_text(json.dumps({"provenance": {"settings": {}}, "rows": []}))
    assert results.recording_problems(folder) == [
        "fake.smoke.json: ks: recorded [4, 8], code [4, 8, 16]",
        "gone.cpu.json: no sweep 'gone' in ftkit.results.SWEEPS"]
    with pytest.raises(AssertionError, match="recorded sweeps that the code would not reproduce"):
        results.assert_recordings_match_code(folder)


def test_every_shipped_recording_matches_the_codes_settings():
    """The check CI runs on ftkit/recorded/: a notebook never draws a sweep made with other settings."""
    results.assert_recordings_match_code()
    for name, sweep in results.SWEEPS.items():          # every registered sweep resolves to real functions
        assert callable(results._resolve(sweep.run)) and callable(results._resolve(sweep.settings)), name


def test_record_command_writes_the_file_and_refuses_an_unknown_sweep(fake, monkeypatch, capsys):
    module, folder = fake
    monkeypatch.setenv("FTKIT_MEMORY_LIMIT", "")      # restored after the test; the command sets it
    assert cli(["record", "fake", "--profile", "smoke", "--memory-limit", "2G", "--out", str(folder)]) == 0
    saved = json.loads((folder / "fake.smoke.json").read_text())["provenance"]
    assert saved["machine"]["FTKIT_MEMORY_LIMIT"] == "2G" and saved["machine"]["memory limit MB"] == 2048
    assert saved["machine"]["small memory"] is True
    assert f"wrote {folder / 'fake.smoke.json'}: 12 rows recorded on" in capsys.readouterr().out
    with pytest.raises(ValueError, match="no sweep called 'missing'"):
        cli(["record", "missing", "--out", str(folder)])
    with pytest.raises(ValueError, match="write it like 2G"):
        cli(["record", "fake", "--memory-limit", "lots", "--out", str(folder)])
    assert module.CALLS == ["smoke"]                  # neither refusal trained anything


ROWS = [{"method": m, "K": k, "seed": s, "accuracy": a} for m, k, s, a in (
    ("SetFit", 8, 0, 0.60), ("SetFit", 8, 1, 0.64), ("SetFit", 8, 2, 0.62),
    ("SetFit", 16, 0, 0.66), ("SetFit", 16, 1, 0.68),
    ("frozen", 8, 0, 0.58), ("frozen", 8, 1, 0.59), ("frozen", 16, 0, 0.63), ("frozen", 16, 1, 0.65))]


def test_a_live_point_is_checked_against_the_recorded_band():
    inside = results.in_band(0.63, ROWS, "accuracy", tolerance=0.0, method="SetFit", K=8)
    assert inside and (inside.low, inside.high, inside.runs) == (0.60, 0.64, 3)
    assert str(inside) == ("accuracy at method=SetFit, K=8: live 0.630, recorded 0.600..0.640 over 3 runs "
                           "(tolerance 0): inside the band")
    single = results.in_band(0.66, [{"K": 4, "accuracy": 0.65}], "accuracy", tolerance=0.02, K=4)
    assert str(single) == "accuracy at K=4: live 0.660, recorded 0.650 in 1 run (tolerance 0.02): inside the band"
    below = results.in_band(0.58, ROWS, "accuracy", tolerance=0.01, method="SetFit", K=8)
    assert not below and "OUTSIDE" in str(below)
    assert results.in_band(0.58, ROWS, "accuracy", tolerance=0.02, method="SetFit", K=8)
    with pytest.raises(ValueError, match=r"no recorded rows at \{'method': 'SetFit', 'K': 32\}; the recording has "
                                         r"\{'method': \['SetFit', 'frozen'\], 'K': \[16, 8\]\}"):
        results.in_band(0.6, ROWS, "accuracy", tolerance=0.01, method="SetFit", K=32)
    with pytest.raises(ValueError, match="have no column 'f1'"):
        results.in_band(0.6, ROWS, "f1", tolerance=0.01, K=8)
    with pytest.raises(ValueError, match="needs a number"):
        results.in_band(math.nan, ROWS, "accuracy", tolerance=0.01, K=8)
    with pytest.raises(ValueError, match="tolerance must be >= 0"):
        results.in_band(0.6, ROWS, "accuracy", tolerance=-0.1, K=8)
    with pytest.raises(TypeError):                      # the tolerance is never implicit
        results.in_band(0.6, ROWS, "accuracy", K=8)


def test_the_figure_draws_mean_and_band_per_group_with_live_points_on_top():
    live = [{"method": "SetFit", "K": 8, "accuracy": 0.63}]
    fig = results.sweep_figure(ROWS, "K", "accuracy", group="method", live=live, log_x=True)
    assert type(fig) is go.Figure
    names = [t.name for t in fig.data]
    assert names == [None, None, "SetFit (recorded)", "SetFit (live)", None, None, "frozen (recorded)"]
    upper, lower, mean = fig.data[0], fig.data[1], fig.data[2]
    assert list(mean.x) == [8, 16] and list(mean.y) == pytest.approx([0.62, 0.67])
    assert list(upper.y) == pytest.approx([0.64, 0.68]) and list(lower.y) == pytest.approx([0.60, 0.66])
    assert lower.fill == "tonexty" and list(fig.data[3].y) == [0.63] and fig.layout.xaxis.type == "log"
    assert list(fig.data[6].y) == pytest.approx([0.585, 0.64])
    assert len(results.sweep_figure(ROWS, "K", "accuracy").data) == 3      # one group, no live points
    with pytest.raises(ValueError, match="no column 'f1' in the sweep's rows"):
        results.sweep_figure(ROWS, "K", "f1")
    with pytest.raises(ValueError, match="no column 'method' in the live rows"):
        results.sweep_figure(ROWS, "K", "accuracy", group="method", live=[{"K": 8, "accuracy": 0.6}])


# --------------------------------------------------------------------------- Expected
def expected_04(cfg, at_defaults=True, f1=0.62):
    exp = results.Expected(cfg, "04 expected results", at_defaults=at_defaults)
    exp.band("entity F1", f1, {"smoke": (0.0, 1.0), "cpu": (0.55, None)})
    exp.band("token accuracy", 0.91, {"cpu": (0.85, None)})          # no band in smoke: shown, not checked
    exp.that("token accuracy above entity F1", 0.91 > f1, f"0.91 vs {f1}")
    exp.that("freezing 4 of 6 blocks costs F1", False, "0.35 vs 0.62", profiles=("cpu",))
    return exp


def test_expected_prints_what_the_learner_should_see(cfg, capsys):
    exp = expected_04(cfg)
    assert exp.report_and_assert() is None
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "04 expected results (smoke profile): 2 of 2 as expected"
    assert out[1].split() == ["✓", "entity", "F1", "0.620", "you", "should", "see", "0", "to", "1"]
    assert out[2].split() == ["·", "token", "accuracy", "0.910", "(no", "band", "for", "the", "smoke", "profile)"]
    assert out[3].split() == ["✓", "token", "accuracy", "above", "entity", "F1", "0.91", "vs", "0.62"]
    assert out[4].endswith("(checked in the cpu profile only)")
    assert [c["ok"] for c in exp.checks] == [True, None, True, None]


def test_expected_raises_a_list_of_misses_at_the_default_settings():
    from ftkit.env import get_profile

    exp = expected_04(get_profile("cpu"), f1=0.40)
    with pytest.raises(AssertionError) as err:
        exp.report_and_assert()
    assert str(err.value) == ("04 expected results, cpu profile: entity F1: got 0.400 (you should see 0.55 or "
                              "more); freezing 4 of 6 blocks costs F1: got 0.35 vs 0.62")


def test_expected_only_compares_when_a_learner_changed_the_settings(capsys):
    from ftkit.env import get_profile

    exp = expected_04(get_profile("cpu"), at_defaults={"DATASET": ("wnut17", "wikigold"), "EPOCHS": (2, 2)},
                      f1=0.40)
    exp.report_and_assert()                                                         # printed, not raised
    assert [c["ok"] for c in exp.checks] == [False, True, True, False]
    head = capsys.readouterr().out.splitlines()[0]
    assert head == ("04 expected results (cpu profile; you changed DATASET = 'wnut17' (default 'wikigold')): the "
                    "expected values hold for the default settings, so this compares and does not check")
    with pytest.raises(AssertionError):            # the same settings given as their defaults do check
        expected_04(get_profile("cpu"), at_defaults={"DATASET": ("wikigold", "wikigold")}, f1=0.4).report_and_assert()


def test_expected_counts_a_missing_number_as_a_miss_and_needs_checks(cfg):
    exp = results.Expected(cfg)
    assert exp.band("loss", math.nan, (0, 3)) is False and exp.band("loss", None, (0, 3)) is False
    with pytest.raises(AssertionError, match="loss: got nan"):
        exp.report_and_assert()
    with pytest.raises(ValueError, match="no checks were added"):
        results.Expected(cfg).report_and_assert()
