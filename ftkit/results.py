"""Results: a table that collects a notebook's runs, recorded sweeps with their provenance, and a notebook's
expected results.

* `ResultsTable`: one row per run; a DataFrame and plotly charts of any two columns.
* Recorded sweeps: a figure that needs many trainings (a curve over K and seeds) is trained in full once, by the
  same code, with `python -m ftkit record NAME --profile cpu`, and shipped in `ftkit/recorded/NAME.PROFILE.json`
  with its provenance. A notebook trains one or two live points and draws them on top of the recording
  (`sweep_figure`), and asserts that they fall inside its band (`in_band`). One switch reruns everything live::

      cfg = ftkit.setup(live=False)                # or FTKIT_LIVE=1
      rows = results.sweep_rows("NAME", cfg)       # cfg.live: run_sweep(...); else load_recorded(...)

* `Expected`: the checks of a notebook's last cell, printed for the learner as "you should see ..."; they raise
  only at the notebook's default settings, so a learner who follows a "try" hint gets a comparison, not an error.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path


class ResultsTable:
    """Append RunResults (or plain dicts); show them as a DataFrame; chart any two columns.

    It keeps each run's numbers, not the run: a RunResult holds its trained model, and a table that kept every
    run would keep every model's weights alive for the rest of the notebook."""

    def __init__(self):
        self.rows: list[dict] = []

    def add(self, result) -> dict:
        row = result.row() if hasattr(result, "row") else dict(result)
        if "setup" not in row:
            raise ValueError("a results row needs a 'setup' name")
        self.rows.append(row)
        return row

    def __len__(self):
        return len(self.rows)

    def column(self, name: str) -> list:
        self._require(name)
        return [r.get(name) for r in self.rows]

    def get(self, setup: str) -> dict:
        """The latest row whose setup is `setup`."""
        for row in reversed(self.rows):
            if row["setup"] == setup:
                return row
        raise KeyError(f"no run called {setup!r}; runs: {[r['setup'] for r in self.rows]}")

    def _require(self, name):
        if not any(name in r for r in self.rows):
            cols = sorted({k for r in self.rows for k in r})
            raise ValueError(f"no column {name!r} in the results; columns: {cols}")

    def to_pandas(self):
        import pandas as pd

        return pd.DataFrame(self.rows)

    def _repr_html_(self):
        return self.to_pandas()._repr_html_() if self.rows else "<i>no runs yet</i>"

    def scatter(self, x: str, y: str, log_x: bool = False, title: str | None = None):
        """One point per run, labelled with its setup: e.g. accuracy vs trainable params."""
        import plotly.graph_objects as go

        self._require(x)
        self._require(y)
        fig = go.Figure(go.Scatter(x=self.column(x), y=self.column(y), mode="markers+text",
                                   text=self.column("setup"), textposition="top center",
                                   marker={"size": 11}))
        fig.update_layout(title=title or f"{y} vs {x}", xaxis_title=x, yaxis_title=y, height=380,
                          margin={"t": 50, "b": 40})
        if log_x:
            fig.update_xaxes(type="log")
        return fig

    def bar(self, y: str, title: str | None = None):
        import plotly.graph_objects as go

        self._require(y)
        fig = go.Figure(go.Bar(x=self.column("setup"), y=self.column(y), text=self.column(y),
                               texttemplate="%{text:.3g}"))
        fig.update_layout(title=title or y, yaxis_title=y, height=360, margin={"t": 50, "b": 40})
        return fig


# --------------------------------------------------------------------------- recorded sweeps
RECORDED_DIR = Path(__file__).resolve().parent / "recorded"


@dataclass(frozen=True)
class Sweep:
    """Where a sweep's code lives, as "module:function" import paths, resolved only when needed (so this core
    module imports no session module).

    run: function(cfg) -> list of row dicts, the full sweep (e.g. one row per method, K and seed).
    settings: function(profile) -> dict of everything that decides the rows (K values, seeds, iterations, test
    size ...), JSON-able, and a function of the profile alone (it receives a `Profile`; a notebook may pass its
    `cfg`, which reads through to the profile)."""

    run: str
    settings: str


# The registry: one line per sweep, e.g.
#     "fewshot_curve": Sweep("ftkit.fewshot:curve_sweep", "ftkit.fewshot:curve_settings"),
SWEEPS: dict[str, Sweep] = {
    "tuning_freezing": Sweep("ftkit.tuning:freezing_sweep", "ftkit.tuning:freezing_settings"),  # 01
    "ner_frozen": Sweep("ftkit.ner:frozen_sweep", "ftkit.ner:frozen_settings"),  # 04
    "lora_classifiers": Sweep("ftkit.lora:classifier_sweep", "ftkit.lora:classifier_settings"),  # 06
    "lora_alpha": Sweep("ftkit.lora:alpha_sweep", "ftkit.lora:alpha_settings"),  # 06
    "fewshot_curve": Sweep("ftkit.fewshot:curve_sweep", "ftkit.fewshot:curve_settings"),  # 02
    "mlm_adaptation": Sweep("ftkit.mlm:adaptation_sweep", "ftkit.mlm:adaptation_settings"),  # 03
    "mlm_downstream": Sweep("ftkit.mlm:downstream_sweep", "ftkit.mlm:downstream_settings"),  # 03
    "choose_kshot": Sweep("ftkit.choose:kshot_sweep", "ftkit.choose:kshot_settings"),  # 07
    "choose_medqa": Sweep("ftkit.choose:medqa_sweep", "ftkit.choose:medqa_settings"),  # 07
    "instruct_base": Sweep("ftkit.instruct:base_side", "ftkit.instruct:base_settings"),  # 05
    "instruct_runs": Sweep("ftkit.instruct:recorded_runs", "ftkit.instruct:recorded_settings"),  # 05
    "instruct_variants": Sweep("ftkit.instruct:variant_runs", "ftkit.instruct:variant_settings"),  # 05
}


def _resolve(path: str):
    import importlib

    module, _, function = path.partition(":")
    if not module or not function:
        raise ValueError(f"{path!r} is not an import path; write it as 'package.module:function'")
    found = getattr(importlib.import_module(module), function, None)
    if not callable(found):
        raise ValueError(f"{path!r}: {module} has no function {function!r}")
    return found


def get_sweep(name: str) -> Sweep:
    if name not in SWEEPS:
        raise ValueError(f"no sweep called {name!r}; registered sweeps: {sorted(SWEEPS)} (ftkit.results.SWEEPS)")
    return SWEEPS[name]


def _jsonable(value):
    """`value` as it reads back from JSON: tuples become lists, numpy numbers plain floats and ints."""
    def plain(obj):
        if hasattr(obj, "tolist"):          # numpy scalars and arrays, torch tensors
            return obj.tolist()
        if isinstance(obj, Path):
            return str(obj)
        raise TypeError(f"{type(obj).__name__} {obj!r} cannot be written to a recorded sweep (JSON)")

    return json.loads(json.dumps(value, default=plain))


def _profile(cfg_or_name):
    from .env import get_profile

    if isinstance(cfg_or_name, str):
        return get_profile(cfg_or_name)
    return getattr(cfg_or_name, "profile", cfg_or_name)


def code_settings(name: str, profile) -> dict:
    """The settings the code uses for sweep `name` in `profile` (a name, Profile or Setup), as JSON reads them."""
    return _jsonable(_resolve(get_sweep(name).settings)(_profile(profile)))


def recorded_path(name: str, profile, folder: Path | None = None) -> Path:
    return Path(folder or RECORDED_DIR) / f"{name}.{_profile(profile).name}.json"


def _git_commit(root: Path | None = None) -> dict | None:
    """The checkout's commit and whether ftkit/'s code had uncommitted changes, when the package runs from a git
    clone (`root`: the checkout, by default this package's)."""
    import subprocess

    root = root or Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        changed = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "ftkit",
                                  ":(exclude)ftkit/recorded"],     # other recordings are data, not code
                                 capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "uncommitted changes in ftkit/": bool(changed)}


def provenance(cfg, settings: dict, seconds: float) -> dict:
    """What made a recording: code version, profile, settings, date, seconds and a summary of the machine."""
    import platform
    from datetime import datetime, timezone

    from . import __version__
    from .env import library_versions

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    limit = getattr(cfg, "memory_limit_mb", None)
    return {"ftkit": __version__, "git": _git_commit(), "profile": _profile(cfg).name,
            "settings": _jsonable(settings), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(float(seconds), 1),
            # above the core count, other jobs shared the machine and `seconds` overstates a run alone
            "load average (1, 5, 15 min)": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
            "machine": {"cores": cores, "device": getattr(cfg, "device", "cpu"), "platform": platform.platform(),
                        "memory limit MB": None if limit is None else round(limit),
                        "FTKIT_MEMORY_LIMIT": os.environ.get("FTKIT_MEMORY_LIMIT") or None,
                        "small memory": bool(getattr(cfg, "small_memory", False))},
            "versions": library_versions()}


class Recorded(list):
    """A sweep's rows (a list of dicts, ready for `pd.DataFrame`), with `.provenance` saying how they were made."""

    def __init__(self, rows, provenance: dict):
        super().__init__(rows)
        self.provenance = provenance

    def summary(self) -> str:
        p = self.provenance
        how = "trained live now" if p.get("live") else f"recorded on {p['date'][:10]}"
        minutes = f"{p['seconds'] / 60:.1f} min" if p.get("seconds") is not None else "time not measured"
        note = f"; {p['note']}" if p.get("note") else ""
        return (f"{len(self)} row{'' if len(self) == 1 else 's'} {how} in the {p['profile']} profile: {minutes} on "
                f"{p['machine']['cores']} cores ({p['machine']['device']}){note}")


def record_sweep(name: str, rows: list[dict], settings: dict, cfg, seconds: float,
                 folder: Path | None = None) -> Path:
    """Write `rows` and their provenance to `folder/NAME.PROFILE.json` atomically (a killed run leaves the old file
    intact). Returns the path."""
    if not rows:
        raise ValueError(f"sweep {name!r} returned no rows; there is nothing to record")
    path = recorded_path(name, cfg, folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"name": name, "provenance": provenance(cfg, settings, seconds), "rows": _jsonable(list(rows))}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def settings_differences(recorded: dict, code: dict) -> list[str]:
    """One line per key whose value differs (or that only one side has)."""
    recorded, code = _jsonable(recorded), _jsonable(code)

    def shown(side, key):
        return repr(side[key]) if key in side else "(absent)"

    return [f"{key}: recorded {shown(recorded, key)}, code {shown(code, key)}"
            for key in sorted(set(recorded) | set(code))
            if key not in recorded or key not in code or recorded[key] != code[key]]


def load_recorded(name: str, settings: dict, profile, folder: Path | None = None) -> Recorded:
    """The rows of the recording of `name` in `profile`, if it was made with exactly `settings`.

    Raises a ValueError naming every differing key when the recording's settings differ from `settings` (a notebook
    must never draw a sweep made with other settings), and when there is no recording."""
    path = recorded_path(name, profile, folder)
    if not path.is_file():
        raise ValueError(f"no recorded sweep {name!r} for the {_profile(profile).name} profile at {path}; record it "
                         f"with `python -m ftkit record {name} --profile {_profile(profile).name}`, or run it live "
                         "(ftkit.setup(live=True))")
    record = json.loads(path.read_text())
    differences = settings_differences(record["provenance"]["settings"], settings)
    if differences:
        raise ValueError(f"the recorded sweep {path.name} was made with other settings than the code's: "
                         + "; ".join(differences) + f". Record it again (`python -m ftkit record {name} --profile "
                         f"{_profile(profile).name}`) or run it live (ftkit.setup(live=True)).")
    return Recorded(record["rows"], record["provenance"])


def run_sweep(name: str, cfg) -> list[dict]:
    """Run the full sweep `name` now, with the registered code; returns its rows."""
    rows = _resolve(get_sweep(name).run)(cfg)
    if not rows:
        raise ValueError(f"sweep {name!r} ({get_sweep(name).run}) returned no rows")
    return list(rows)


def record(name: str, cfg, folder: Path | None = None) -> Path:
    """Run the full sweep `name` for `cfg` and write its recording (what `python -m ftkit record` does)."""
    import time

    settings = code_settings(name, cfg)
    start = time.perf_counter()
    rows = run_sweep(name, cfg)
    return record_sweep(name, rows, settings, cfg, time.perf_counter() - start, folder)


def sweep_rows(name: str, cfg, folder: Path | None = None) -> Recorded:
    """The one switch: the full sweep trained now when `cfg.live` is on, or when nothing was recorded for this
    profile (said in a printed line); otherwise its recording, refused if made with other settings."""
    settings = code_settings(name, cfg)
    live = getattr(cfg, "live", False)
    if not live and recorded_path(name, cfg, folder).is_file():
        return load_recorded(name, settings, cfg, folder)
    if not live:
        print(f"No recorded sweep {name!r} for the {_profile(cfg).name} profile: training all of it now.")
    import time

    start = time.perf_counter()
    rows = run_sweep(name, cfg)
    return Recorded(rows, {**provenance(cfg, settings, time.perf_counter() - start), "live": True})


def recording_problems(folder: Path | None = None) -> list[str]:
    """For CI: every shipped recording whose settings differ from the code's for its profile, or whose sweep is not
    registered. An empty list means every recording may be drawn."""
    problems = []
    for path in sorted(Path(folder or RECORDED_DIR).glob("*.json")):
        name, _, profile = path.stem.rpartition(".")
        if name not in SWEEPS:
            problems.append(f"{path.name}: no sweep {name!r} in ftkit.results.SWEEPS")
            continue
        recorded = json.loads(path.read_text())["provenance"]["settings"]
        problems += [f"{path.name}: {line}" for line in settings_differences(recorded, code_settings(name, profile))]
    return problems


def assert_recordings_match_code(folder: Path | None = None) -> None:
    problems = recording_problems(folder)
    assert not problems, "recorded sweeps that the code would not reproduce:\n" + "\n".join(problems)


# --------------------------------------------------------------------------- live points against a recording
@dataclass(frozen=True)
class BandCheck:
    """A live value against the recorded range (min..max) of the same point, widened by `tolerance`.
    Truthy when inside; `str()` says it in one line."""

    column: str
    point: dict
    live: float
    low: float
    high: float
    runs: int
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.low - self.tolerance <= self.live <= self.high + self.tolerance

    def __bool__(self):
        return self.ok

    def __str__(self):
        where = ", ".join(f"{k}={v}" for k, v in self.point.items())
        recorded = (f"recorded {self.low:.3f} in 1 run" if self.runs == 1 else
                    f"recorded {self.low:.3f}..{self.high:.3f} over {self.runs} runs")
        return (f"{self.column} at {where}: live {self.live:.3f}, {recorded} (tolerance {self.tolerance:g}): "
                f"{'inside' if self.ok else 'OUTSIDE'} the band")


def band(rows, column: str, **point) -> tuple[float, float, int]:
    """(min, max, count) of `column` over the rows that match `point` (e.g. method="SetFit", K=8)."""
    matching = [r for r in rows if all(r.get(k) == v for k, v in point.items())]
    if not matching:
        seen = {k: sorted({r.get(k) for r in rows}, key=str) for k in point}
        raise ValueError(f"no recorded rows at {point}; the recording has {seen}")
    values = [r[column] for r in matching if column in r]
    if len(values) < len(matching):
        raise ValueError(f"recorded rows at {point} have no column {column!r}; columns: {sorted(matching[0])}")
    return min(values), max(values), len(values)


def in_band(live: float, rows, column: str, *, tolerance: float, **point) -> BandCheck:
    """Is the live `column` value within the recorded min..max at `point`, give or take `tolerance` (required:
    one or two live runs scatter as seeds do, so say how far)? `assert check, str(check)` in a notebook."""
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    if not math.isfinite(live):
        raise ValueError(f"the live {column} is {live}; a band check needs a number")
    low, high, runs = band(rows, column, **point)
    return BandCheck(column, dict(point), float(live), float(low), float(high), runs, float(tolerance))


def sweep_figure(rows, x: str, y: str, group: str | None = None, live=None, title: str | None = None,
                 log_x: bool = False, height: int = 420):
    """The recorded sweep as a mean line with its min..max band per `group`, and the `live` rows (same columns) as
    large markers on top. A plain `go.Figure` (FigureWidget does not render in Colab)."""
    import pandas as pd
    import plotly.graph_objects as go
    from plotly.colors import hex_to_rgb, qualitative

    frame, live_frame = pd.DataFrame(list(rows)), pd.DataFrame(list(live or []))
    for what, table in (("sweep's", frame), ("live", live_frame)):
        for column in (x, y) + ((group,) if group else ()):
            if column not in table and not (what == "live" and table.empty):
                raise ValueError(f"no column {column!r} in the {what} rows; columns: {sorted(table.columns)}")
    groups = list(dict.fromkeys(frame[group])) if group else [None]
    fig = go.Figure()
    for i, name in enumerate(groups):
        color = qualitative.Plotly[i % len(qualitative.Plotly)]
        part = frame if name is None else frame[frame[group] == name]
        stats = part.groupby(x)[y].agg(["mean", "min", "max", "count"]).reset_index().sort_values(x)
        label = y if name is None else str(name)
        fig.add_trace(go.Scatter(x=stats[x], y=stats["max"], mode="lines", line={"width": 0}, hoverinfo="skip",
                                 showlegend=False, legendgroup=label))
        fig.add_trace(go.Scatter(x=stats[x], y=stats["min"], mode="lines", line={"width": 0}, fill="tonexty",
                                 fillcolor="rgba({},{},{},0.18)".format(*hex_to_rgb(color)), hoverinfo="skip",
                                 showlegend=False, legendgroup=label))
        fig.add_trace(go.Scatter(x=stats[x], y=stats["mean"], mode="lines+markers", name=f"{label} (recorded)",
                                 line={"color": color}, legendgroup=label, customdata=stats[["min", "max", "count"]],
                                 hovertemplate="%{x}: mean %{y:.3f}, range %{customdata[0]:.3f}.."
                                               "%{customdata[1]:.3f} over %{customdata[2]} runs<extra></extra>"))
        points = live_frame if name is None or live_frame.empty else live_frame[live_frame[group] == name]
        if not points.empty:
            fig.add_trace(go.Scatter(x=points[x], y=points[y], mode="markers", name=f"{label} (live)",
                                     legendgroup=label, marker={"color": color, "size": 14, "symbol": "star",
                                                                "line": {"width": 1, "color": "black"}}))
    fig.update_layout(title=title or f"{y} vs {x}: recorded (line: mean, band: min..max), live runs as stars",
                      xaxis_title=x, yaxis_title=y, height=height, margin={"t": 50, "b": 40})
    if log_x:
        fig.update_xaxes(type="log")
    return fig


# --------------------------------------------------------------------------- training curves
def training_curves(result, per: str = "step", title: str | None = None, height: int = 360):
    """One run's training as two charts side by side: training loss (the Trainer's mean over each logging window)
    and validation loss (each evaluation during training; the kept best checkpoint as a star) against optimizer
    steps or epochs (`per="epoch"`), and the learning rate of every optimizer step (warm-up and decay).

    `result` is a `train.RunResult` from `fit(..., validation_ds=...)` (or any run: without validation the left chart
    shows the training loss alone). A plain `go.Figure`. A ValueError when the run kept no history to draw."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if per not in ("step", "epoch"):
        raise ValueError(f'per must be "step" or "epoch", got {per!r}')
    if not result.loss_history and not result.eval_history:
        raise ValueError(f"run {result.name!r} has no loss history to draw (a run made by train.fit keeps one; "
                         "a feature-based head trains outside the Trainer)")
    if per == "epoch" and not result.steps_per_epoch:
        raise ValueError(f"run {result.name!r} does not know its steps per epoch; draw it with per='step'")
    scale = result.steps_per_epoch if per == "epoch" else 1.0
    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss", "learning rate"), horizontal_spacing=0.12)
    steps, losses = zip(*result.loss_history) if result.loss_history else ((), ())
    fig.add_trace(go.Scatter(x=[s / scale for s in steps], y=losses, mode="lines+markers", name="training loss",
                             marker={"size": 5}), row=1, col=1)
    if result.eval_history:
        fig.add_trace(go.Scatter(x=[h["step"] / scale for h in result.eval_history],
                                 y=[h["loss"] for h in result.eval_history], mode="lines+markers",
                                 name="validation loss", marker={"size": 8}), row=1, col=1)
    best = [h for h in result.eval_history if h["step"] == result.best_step]
    if best:
        fig.add_trace(go.Scatter(x=[best[0]["step"] / scale], y=[best[0]["loss"]], mode="markers",
                                 name=f"kept: step {result.best_step}",
                                 marker={"size": 16, "symbol": "star", "line": {"width": 1, "color": "black"}}),
                      row=1, col=1)
    if result.lr_history:
        lr_steps, rates = zip(*result.lr_history)
        fig.add_trace(go.Scatter(x=[s / scale for s in lr_steps], y=rates, mode="lines", name="learning rate"),
                      row=1, col=2)
    fig.update_xaxes(title_text=per)
    fig.update_yaxes(title_text="loss", row=1, col=1)
    fig.update_yaxes(title_text="learning rate", exponentformat="e", row=1, col=2)
    fig.update_layout(title=title or f"{result.name}: training vs validation loss, and the learning rate",
                      height=height, margin={"t": 60, "b": 40})
    return fig


# --------------------------------------------------------------------------- expected results
def _shown(value, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


class Expected:
    """The checks of a notebook's "Expected results" cell, for the learner first and for CI second.

    `band(...)` and `that(...)` collect named checks; `report_and_assert()` prints one line per check (what you got,
    what you should see, whether it matched) and raises an AssertionError listing the misses, but only when the
    notebook ran at its default settings. `at_defaults` is a bool, or {setting: (value now, default)} so the
    printout can name what the learner changed. A check without a band for the running profile is shown, not
    checked (e.g. accuracy bands in the smoke profile, whose 8 training steps prove only that the code runs)."""

    def __init__(self, cfg, title: str = "Expected results", at_defaults: bool | dict = True):
        self.profile = _profile(cfg).name
        self.title = title
        if isinstance(at_defaults, dict):
            self.changed = {k: (now, default) for k, (now, default) in at_defaults.items() if now != default}
            at_defaults = not self.changed
        else:
            self.changed = {}
        self.at_defaults = bool(at_defaults)
        self.checks: list[dict] = []

    def _add(self, name: str, got: str, expected: str, ok: bool | None) -> bool | None:
        self.checks.append({"result": name, "got": got, "expected": expected, "ok": ok})
        return ok

    def band(self, name: str, value, bands, fmt: str = ".3f") -> bool | None:
        """`value` within (low, high) (either may be None: open). `bands` is one (low, high) for every profile, or
        {profile: (low, high)}; a profile not in it shows the value unchecked. Returns True/False, or None when
        unchecked."""
        limits = bands.get(self.profile) if isinstance(bands, dict) else bands
        got = _shown(value, fmt)
        if limits is None:
            return self._add(name, got, f"(no band for the {self.profile} profile)", None)
        low, high = limits
        wanted = (f"you should see {low:g} to {high:g}" if low is not None and high is not None else
                  f"you should see {low:g} or more" if low is not None else f"you should see {high:g} or less")
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ok = number and (low is None or value >= low) and (high is None or value <= high)
        return self._add(name, got, wanted, bool(ok))

    def that(self, name: str, ok, got="", profiles=None) -> bool | None:
        """A condition that `name` states as the learner should see it (e.g. "token accuracy above entity F1");
        `got` shows the numbers behind it. `profiles` limits it to those profiles (elsewhere it is shown, unchecked)."""
        if profiles is not None and self.profile not in profiles:
            return self._add(name, str(got), f"(checked in the {', '.join(profiles)} profile only)", None)
        return self._add(name, str(got), "", bool(ok))

    @property
    def misses(self) -> list[dict]:
        return [c for c in self.checks if c["ok"] is False]

    def lines(self) -> list[str]:
        checked = [c for c in self.checks if c["ok"] is not None]
        head = f"{self.title} ({self.profile} profile"
        if self.changed:
            changes = ", ".join(f"{k} = {now!r} (default {default!r})" for k, (now, default) in self.changed.items())
            head += (f"; you changed {changes}): the expected values hold for the default settings, so this "
                     "compares and does not check")
        elif not self.at_defaults:
            head += ", settings changed): the expected values hold for the default settings, so this compares"
        else:
            head += f"): {len(checked) - len(self.misses)} of {len(checked)} as expected"
        width = max([len(c["result"]) for c in self.checks] + [6])
        got_width = max([len(c["got"]) for c in self.checks] + [3])
        mark = {True: "✓", False: "✗", None: "·"}
        return [head] + [f"  {mark[c['ok']]} {c['result']:<{width}}  {c['got']:<{got_width}}  {c['expected']}".rstrip()
                         for c in self.checks]

    def report_and_assert(self) -> None:
        """Print the table; at the default settings, raise an AssertionError that lists every miss. (Returns None, so
        a notebook's last line shows the printout only; the checks are in `.checks`.)"""
        if not self.checks:
            raise ValueError(f"{self.title}: no checks were added; call band(...) or that(...) first")
        print("\n".join(self.lines()))
        if self.at_defaults and self.misses:
            raise AssertionError(f"{self.title}, {self.profile} profile: " + "; ".join(
                f"{c['result']}: got {c['got']}" + (f" ({c['expected']})" if c["expected"] else "")
                for c in self.misses))
