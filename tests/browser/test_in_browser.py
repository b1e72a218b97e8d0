"""The course as a student meets it: JupyterLab in a real (headless) Chromium, every student copy run with Run All.

The student copies (course/student/, written by `python -m ftkit student course/student`) are the notebooks with
every exercise's solution replaced by `...  # your code here`; nbval runs the notebooks with their solutions, where
every check must pass (FTKIT_CHECKS=strict). Here FTKIT_CHECKS=unattempted: every check must report "not
attempted", so Run All proves that a copy completes without the learner's answers and that no check passes on a
placeholder. One exercise per session is photographed as a learner sees it (its check's output).

For each notebook, in the smoke profile and on the small-machine path Binder's 2 GB takes (FTKIT_MEMORY_LIMIT=2G;
nbval covers the default path): no cell may end in an error, ipywidgets and plotly figures must be
rendered in the page, and on one panel a control is changed and the button pressed in the page, after which the
panel's output must change. Screenshots go to tests/browser/screenshots/ (or $FTKIT_SCREENSHOTS).

Opt-in, because it runs every notebook a second time: FTKIT_BROWSER=1, Chromium (apt-get install chromium) and
Playwright (pip install -e ".[browser]"). `.ci/run` installs both and runs it after `make test`. Run it alone:
it starts its own JupyterLab and kernels.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("FTKIT_CHROMIUM", "/usr/bin/chromium")
STUDENT = ROOT / "course" / "student"
NOTEBOOKS = sorted(p.name for p in STUDENT.glob("*.ipynb"))
SHOTS = Path(os.environ.get("FTKIT_SCREENSHOTS", Path(__file__).parent / "screenshots"))
RUN_ALL_TIMEOUT_MS = 15 * 60 * 1000


def _why_not() -> str | None:
    if os.environ.get("FTKIT_BROWSER") != "1":
        return "set FTKIT_BROWSER=1"
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set FTKIT_CHROMIUM)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is missing (pip install -e '.[browser]')"
    return None


if (_reason := _why_not()) is not None:
    pytest.skip(f"browser suite skipped: {_reason}; it also needs Chromium and Playwright (see this file's "
                "docstring)", allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab on 127.0.0.1 with a token, serving a copy of course/student/ (Lab autosaves; the repo stays
    clean)."""
    work = tmp_path_factory.mktemp("course")
    for name in NOTEBOOKS:
        shutil.copy(STUDENT / name, work / name)
    settings = tmp_path_factory.mktemp("lab-settings")
    tracker = settings / "@jupyterlab" / "notebook-extension"
    tracker.mkdir(parents=True)
    # Render every cell (no virtual scrolling), so what a student scrolls to is in the page to be checked.
    (tracker / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))    # no news toast over the screenshots
    port, token = _free_port(), secrets.token_hex(16)
    log = open(work / "jupyterlab.log", "w")
    # A workspace of its own: Lab re-opens the tabs of its last workspace, and a notebook left open by an earlier
    # (interrupted) run would start a second kernel and take the focus.
    # FTKIT_MEMORY_LIMIT=2G: the kernels take Binder's small-machine path (cfg.small_memory), which is where students
    # meet the course in a browser; nbval in `make test` runs the same notebooks on the default path.
    # FTKIT_CHECKS=unattempted: a check that passes or fails on a student copy's placeholder is a cell error.
    env = {**os.environ, "FTKIT_PROFILE": "smoke", "FTKIT_MEMORY_LIMIT": os.environ.get("FTKIT_MEMORY_LIMIT", "2G"),
           "FTKIT_CHECKS": "unattempted",
           "HF_HUB_OFFLINE": "1", "JUPYTERLAB_SETTINGS_DIR": str(settings),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path_factory.mktemp("lab-workspaces"))}
    proc = subprocess.Popen([sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1",
                             f"--port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}",
                             "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None",
                             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
                            + (["--allow-root"] if os.geteuid() == 0 else []),     # CI containers run as root
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                log.flush()
                raise RuntimeError("JupyterLab did not start:\n" + (work / "jupyterlab.log").read_text()[-3000:])
            time.sleep(0.5)
    yield url, token
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


# JupyterLab's own application object (exposed by --LabApp.expose_app_in_browser) answers what the page shows.
NOTEBOOK_READY = """() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
  return !!k && k.status === 'idle' && w.content.widgets.length > 0; }"""
RUN_STARTED = """() => { const w = window.jupyterapp.shell.currentWidget;
  return w.sessionContext.session.kernel.status === 'busy' || w.content.widgets.some(c => c.model.type === 'code'
    && (c.model.executionCount !== null || /\\*/.test(c.node.querySelector('.jp-InputPrompt').textContent))); }"""
RUN_FINISHED = """() => { const w = window.jupyterapp.shell.currentWidget;
  const code = w.content.widgets.filter(c => c.model.type === 'code');
  const failed = code.some(c => c.model.outputs.toJSON().some(o => o.output_type === 'error'));
  const pending = code.some(c => /\\*/.test(c.node.querySelector('.jp-InputPrompt').textContent));
  const done = code.every(c => c.model.executionCount !== null);
  return w.sessionContext.session.kernel.status === 'idle' && !pending && (done || failed); }"""
ERRORS = """() => window.jupyterapp.shell.currentWidget.content.widgets
  .filter(c => c.model.type === 'code')
  .flatMap((c, i) => c.model.outputs.toJSON().filter(o => o.output_type === 'error')
  .map(o => `cell ${i}: ${o.ename}: ${o.evalue}`))"""


def _panels(page):
    """ftkit Panels in the page: a widget box holding a button and a progress bar (widgets.Panel's layout)."""
    return page.locator(".widget-vbox").filter(has=page.locator(":scope > .widget-hbox > button.jupyter-button")) \
        .filter(has=page.locator(".widget-hprogress, progress")).filter(has=page.locator(".widget-slider"))


def _photograph_an_exercise(page, name, stem) -> None:
    """The first exercise of the notebook as a learner meets it: the placeholder and its check's output."""
    exercises = (ROOT / "course" / name).read_text().count("### BEGIN SOLUTION")
    checks = page.locator(".ftkit-check")
    if exercises == 0:
        assert checks.count() == 0, f"{name}: check output without an exercise"
        return
    assert checks.count() > 0, f"{name}: {exercises} solution regions, but no check output rendered"
    texts = checks.all_inner_texts()
    assert all("not attempted" in t for t in texts), f"{name}: a check did not say 'not attempted': {texts}"
    cell = page.locator(".jp-Cell").filter(has=page.locator(".ftkit-check")).first
    cell.scroll_into_view_if_needed()
    cell.screenshot(path=str(SHOTS / f"{stem}-exercise.png"))


def _nudge_first_slider(panel) -> tuple[str, str]:
    """Move the panel's first slider one step with the keyboard, as a student would; returns (before, after)."""
    readout = panel.locator(".widget-slider .widget-readout").first
    before = readout.inner_text()
    handle = panel.locator(".widget-slider .noUi-handle").first
    handle.focus()
    handle.press("ArrowRight")
    if readout.inner_text() == before:              # already at its maximum
        handle.press("ArrowLeft")
    return before, readout.inner_text()


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_and_a_panel_works_in_the_browser(lab, page, name):
    url, token = lab
    SHOTS.mkdir(parents=True, exist_ok=True)
    stem = Path(name).stem
    page.goto(f"{url}/lab/tree/{name}?reset&token={token}")     # reset: only this notebook open, no restored tabs
    page.wait_for_function(NOTEBOOK_READY, timeout=120_000)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    page.wait_for_function(RUN_STARTED, timeout=60_000, polling=100)     # before polling for the end
    page.wait_for_function(RUN_FINISHED, timeout=RUN_ALL_TIMEOUT_MS, polling=1000)
    page.screenshot(path=str(SHOTS / f"{stem}-run-all.png"))

    errors = page.evaluate(ERRORS)
    assert errors == [], f"{name}: cells ended in an error in the browser: {errors}"
    assert page.locator(".jupyter-widgets").count() > 0, f"{name}: no ipywidgets rendered"
    _photograph_an_exercise(page, name, stem)
    source = (STUDENT / name).read_text()
    if re.search(r"go\.Figure|\.bar\(|fig\b", source):
        page.locator(".js-plotly-plot").first.wait_for(timeout=30_000)
        assert page.locator(".js-plotly-plot").count() > 0, f"{name}: no plotly figure rendered"

    panels = _panels(page)
    assert panels.count() > 0, f"{name}: no ftkit panel with a slider found"
    panel = panels.first
    panel.scroll_into_view_if_needed()
    before_text = panel.inner_text()
    before, after = _nudge_first_slider(panel)
    assert after != before, f"{name}: the slider did not move ({before})"
    panel.locator(":scope > .widget-hbox > button.jupyter-button").first.click()
    page.wait_for_function(
        """([el, old]) => el.innerText !== old && !el.querySelector(':scope > .widget-hbox > button').disabled
           && /done|error/.test(el.innerText)""",
        arg=[panel.element_handle(), before_text], timeout=10 * 60_000, polling=1000)
    panel.screenshot(path=str(SHOTS / f"{stem}-panel.png"))
    text = panel.inner_text()
    assert "error" not in text.split("\n")[-20:] and "Error:" not in text, f"{name}: the panel run failed:\n{text[-800:]}"


@pytest.fixture()
def page(browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    yield page
    page.close()


@pytest.fixture(autouse=True)
def _one_kernel_at_a_time(lab):
    """Shut every kernel down after each notebook, as a student closing it would: a finished notebook's kernel
    (up to 3.5 GB for session 05) must not sit beside the next one's."""
    yield
    url, token = lab
    sessions = json.load(urllib.request.urlopen(f"{url}/api/sessions?token={token}", timeout=10))
    for session in sessions:
        request = urllib.request.Request(f"{url}/api/sessions/{session['id']}?token={token}", method="DELETE")
        urllib.request.urlopen(request, timeout=60)
