"""Every notebook is committed clean and follows the course layout."""
import json
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "course").glob("*.ipynb"))
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def test_there_are_notebooks():
    assert [p.name for p in NOTEBOOKS][:1] == ["00_start_here.ipynb"]


@pytest.fixture(params=NOTEBOOKS, ids=lambda p: p.name)
def nb(request):
    return nbformat.read(request.param, as_version=4)


def test_valid_nbformat(nb):
    nbformat.validate(nb)


def test_no_widget_state_and_no_stray_outputs(nb):
    assert "widgets" not in nb.metadata, "clear the saved widget state (Edit > Clear Outputs of All Cells)"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        assert cell.execution_count is None, f"cell {i} has an execution count"
        assert not any(WIDGET_VIEW in out.get("data", {}) for out in cell.outputs), f"cell {i} saved a widget view"
        if "NBVAL_CHECK_OUTPUT" not in cell.source:
            assert cell.outputs == [], f"cell {i} has stray outputs; only NBVAL_CHECK_OUTPUT cells keep outputs"


def test_course_layout(nb):
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert "google.colab" in code[0], "the first code cell installs the course in Colab"
    assert "ftkit.setup(" in code[1], "the second code cell is cfg = ftkit.setup()"
    md = [c.source for c in nb.cells if c.cell_type == "markdown"]
    assert any(re.search(r"^## Expected results", s, re.M) for s in md), "an '## Expected results' section"
    assert "assert" in code[-1] and "expected results" in code[-1].lower(), "the last cell asserts the bands"


def test_no_placeholder_left_in_expected_results(nb):
    text = json.dumps([c.source for c in nb.cells])
    assert not re.search(r"MEASURE_[A-Z]+", text), "an expected-results band was never measured"


def test_solution_and_expected_results_cells_are_folded(nb):
    """An exercise's reference solution is folded, so a learner can try first, and so is the expected-results cell,
    whose code is for CI while its printout is for the learner (JupyterLab, Jupyter and Colab)."""
    from ftkit.exercises import notebooks

    for i, cell in enumerate(nb.cells):
        title = notebooks.fold_title(cell) if cell.cell_type == "code" else None
        if title:
            assert notebooks.is_folded(cell, title), (f"cell {i} is not folded: run "
                                                      "`python -m ftkit student course/student --fold`")


def test_the_readme_lists_every_notebook():
    readme = (ROOT / "README.md").read_text()
    for path in NOTEBOOKS:
        assert f"course/{path.name}" in readme, f"README's session table misses {path.name}"
