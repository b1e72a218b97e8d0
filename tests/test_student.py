"""Student copies: solution regions, the placeholder, the Run-All checks, folding, and the committed copies in
course/student being exactly what `python -m ftkit student course/student` writes now."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from ftkit.__main__ import main
from ftkit.exercises import PLACEHOLDER
from ftkit.exercises import notebooks as nbs

ROOT = Path(__file__).resolve().parent.parent
COURSE = ROOT / "course"
STUDENT = COURSE / "student"
REGENERATE = "python -m ftkit student course/student"

FUNCTION_CELL = '''from ftkit.exercises.start import check


def count_trainable(model):
    """How many parameters training would update."""
    ### BEGIN SOLUTION
    total = 0
    for p in model.parameters():
        total += p.numel() if p.requires_grad else 0
    return total
    ### END SOLUTION


check.q1(count_trainable)'''


def test_a_region_in_a_function_becomes_the_placeholder_with_its_indentation():
    assert nbs.student_source(FUNCTION_CELL) == f'''from ftkit.exercises.start import check


def count_trainable(model):
    """How many parameters training would update."""
    {PLACEHOLDER}


check.q1(count_trainable)'''


def test_a_region_at_module_level_keeps_the_names_it_binds_as_placeholders():
    source = "x = 1\n### BEGIN SOLUTION\nn, m = 770, 2\nlabels = [f(t) for t in x]\n### END SOLUTION\ncheck.q1(n)"
    assert nbs.student_source(source) == f"x = 1\nn = {PLACEHOLDER}\nm = {PLACEHOLDER}\nlabels = {PLACEHOLDER}\n" \
                                         "check.q1(n)"
    inside_if = "if True:\n    ### BEGIN SOLUTION\n    y = 2\n    ### END SOLUTION\ncheck.q2(y)"
    assert nbs.student_source(inside_if) == f"if True:\n    y = {PLACEHOLDER}\ncheck.q2(y)"
    nothing_bound = "### BEGIN SOLUTION\nprint(1)\n### END SOLUTION"
    assert nbs.student_source(nothing_bound) == PLACEHOLDER


def test_a_region_in_a_method_and_two_regions_in_one_cell():
    source = ("class LoRA:\n    def __init__(self, r):\n        ### BEGIN SOLUTION\n        self.r = r\n"
              "        ### END SOLUTION\n\n    def forward(self, x):\n        ### BEGIN SOLUTION\n        return x\n"
              "        ### END SOLUTION\ncheck.q3(LoRA)")
    assert nbs.student_source(source) == (f"class LoRA:\n    def __init__(self, r):\n        {PLACEHOLDER}\n\n"
                                          f"    def forward(self, x):\n        {PLACEHOLDER}\ncheck.q3(LoRA)")


@pytest.mark.parametrize("source, message", [
    ("### BEGIN SOLUTION\nx = 1", "line 1: ### BEGIN SOLUTION is never closed"),
    ("x = 1\n### END SOLUTION", "line 2: ### END SOLUTION without a ### BEGIN SOLUTION"),
    ("### BEGIN SOLUTION\n### BEGIN SOLUTION\nx = 1\n### END SOLUTION", "inside the region opened on line 1"),
    ("def f():\n    ### BEGIN SOLUTION\n    return 1\n### END SOLUTION", "must have the same indentation"),
    ("### BEGIN SOLUTION\n# nothing\n### END SOLUTION", "the solution region holds no code"),
    ("x = 1  ### BEGIN SOLUTION", "on a line of its own"),
    ("def f(x):\n    y = x\n    ### BEGIN SOLUTION\n    return y\n    ### END SOLUTION",
     "inside `def f` must hold the whole body"),
    ("### BEGIN SOLUTION\nx = (\n### END SOLUTION", "not valid Python"),
])
def test_bad_regions_are_refused_with_what_to_do(source, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("`", "`")):
        nbs.student_source(source, "nb cell 3")


def _notebook(*sources):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(s[3:]) if s.startswith("md:") else nbformat.v4.new_code_cell(s)
                for s in sources]
    return nb


def test_run_all_safety_refuses_a_later_cell_that_uses_the_answer():
    nb = _notebook("import torch", FUNCTION_CELL, "print(count_trainable(model))")
    with pytest.raises(ValueError, match=r"x.ipynb cell 2 \(print\(count_trainable\(model\)\)\) uses "
                                         r"`count_trainable`, which the exercise in cell 1 defines"):
        nbs.check_run_all(nb, "x.ipynb")
    nbs.check_run_all(_notebook(FUNCTION_CELL, "count_trainable = len\nprint(count_trainable([]))"), "x.ipynb")
    nbs.check_run_all(_notebook(FUNCTION_CELL, "check.summary()\nimport os"), "x.ipynb")    # imports are safe
    # a later solution may use an earlier answer: in a student copy it is replaced
    later = "### BEGIN SOLUTION\nk = count_trainable(m)\n### END SOLUTION\ncheck.q2(k)"
    nbs.check_run_all(_notebook(FUNCTION_CELL, later), "x.ipynb")
    outside = "k = count_trainable(m)\n### BEGIN SOLUTION\nj = k\n### END SOLUTION\ncheck.q2(j)"
    with pytest.raises(ValueError, match="uses `count_trainable`"):
        nbs.check_run_all(_notebook(FUNCTION_CELL, outside), "x.ipynb")


@pytest.mark.parametrize("sources, message", [
    ((FUNCTION_CELL, "check.q1(len)"), "`check.q1(len)` is called outside an exercise cell"),
    (("### BEGIN SOLUTION\nx = 1\n### END SOLUTION\ncheck.q1(x + 1)",), "`check.q1(x + 1)` must pass a name"),
    (("y = 2\n### BEGIN SOLUTION\nx = 1\n### END SOLUTION\ncheck.q1(y)",), "`check.q1(y)` must pass a name the "
                                                                           "solution region defines"),
    (("### BEGIN SOLUTION\nx = 1\n### END SOLUTION",), "an exercise cell calls its check"),
])
def test_run_all_safety_refuses_checks_that_would_not_see_the_placeholder(sources, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        nbs.check_run_all(_notebook(*sources), "x.ipynb")


def test_a_student_notebook_is_cleared_unfolded_and_relinked_and_the_original_is_untouched():
    nb = _notebook("md:See [`ftkit/tuning.py`](../ftkit/tuning.py), [next](01_feature_vs_parameter_tuning.ipynb), "
                   "[web](https://x.org/a.py) and [here](#top).", FUNCTION_CELL)
    nbs.fold(nb.cells[1])
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="passed")]
    nb.cells[1].execution_count = 3
    before = json.dumps(nb, sort_keys=True)
    copy = nbs.student_notebook(nb, "x.ipynb", COURSE, STUDENT)
    assert json.dumps(nb, sort_keys=True) == before
    assert copy.cells[0].source == ("See [`ftkit/tuning.py`](../../ftkit/tuning.py), [next]"
                                    "(01_feature_vs_parameter_tuning.ipynb), [web](https://x.org/a.py) and "
                                    "[here](#top).")
    cell = copy.cells[1]
    assert cell.outputs == [] and cell.execution_count is None and cell.metadata == {}
    assert cell.source == nbs.student_source(FUNCTION_CELL)


def test_fold_is_idempotent_and_unfold_undoes_it():
    cell = nbformat.v4.new_code_cell(FUNCTION_CELL)
    assert not nbs.is_folded(cell)
    nbs.fold(cell)
    assert nbs.is_folded(cell) and cell.source == nbs.SOLUTION_TITLE + "\n" + FUNCTION_CELL
    nbs.fold(cell)
    assert cell.source.count("@title") == 1
    nbs.unfold(cell)
    assert cell.source == FUNCTION_CELL and cell.metadata == {}


def test_fold_solution_cells_rewrites_a_notebook_only_when_needed(tmp_path):
    path = tmp_path / "n.ipynb"
    expected = "expected = results.Expected(cfg)\nexpected.report_and_assert()"
    nbformat.write(_notebook("x = 1", FUNCTION_CELL, expected), path)
    assert nbs.fold_solution_cells(path) is True
    cells = nbformat.read(path, as_version=4).cells
    assert nbs.is_folded(cells[1]) and nbs.is_folded(cells[2], nbs.EXPECTED_TITLE)
    assert not nbs.is_folded(cells[0], nbs.fold_title(cells[0]) or "") and "jupyter" not in cells[0].metadata
    assert cells[2].source.splitlines() == [nbs.EXPECTED_TITLE, *expected.splitlines()]
    assert nbs.fold_solution_cells(path) is False


def test_the_command_writes_copies_and_refuses_to_overwrite_the_course(tmp_path, capsys):
    course = tmp_path / "course"
    course.mkdir()
    nbformat.write(_notebook("import os", FUNCTION_CELL), course / "00_x.ipynb")
    assert main(["student", str(tmp_path / "out"), "--course", str(course), "--fold"]) == 0
    assert "folded the solution cells" in capsys.readouterr().out
    copy = nbformat.read(tmp_path / "out" / "00_x.ipynb", as_version=4)
    assert PLACEHOLDER in copy.cells[1].source and "BEGIN SOLUTION" not in copy.cells[1].source
    assert main(["student", str(course), "--course", str(course)]) == 2
    assert "would overwrite the solutions" in capsys.readouterr().err
    assert main(["student", str(tmp_path / "out"), "--course", str(tmp_path / "none")]) == 2
    assert "no notebooks in" in capsys.readouterr().err
    nbformat.write(_notebook(FUNCTION_CELL, "count_trainable(1)"), course / "01_y.ipynb")
    assert main(["student", str(tmp_path / "out2"), "--course", str(course)]) == 2
    assert not (tmp_path / "out2").exists(), "nothing is written when one notebook is refused"


# ------------------------------------------------------------------------------------------------------------
# The committed student copies (course/student/) are what Binder and Colab links open.
# ------------------------------------------------------------------------------------------------------------
def test_the_committed_student_copies_are_current():
    course = sorted(p.name for p in COURSE.glob("*.ipynb"))
    assert sorted(p.name for p in STUDENT.glob("*.ipynb")) == course, f"course/student is out of date: {REGENERATE}"
    stale = [name for name in course if (STUDENT / name).read_text() != nbs.student_copy_text(COURSE / name, STUDENT)]
    assert not stale, f"course/student/{stale} are not what the generator writes now: {REGENERATE}"


@pytest.mark.parametrize("name", sorted(p.name for p in STUDENT.glob("*.ipynb")))
def test_a_student_copy_holds_no_solution_and_no_output(name):
    nb = nbformat.read(STUDENT / name, as_version=4)
    text = json.dumps([c.source for c in nb.cells])
    assert "BEGIN SOLUTION" not in text and "END SOLUTION" not in text and nbs.SOLUTION_TITLE not in text
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
            folded = "source_hidden" in cell.metadata.get("jupyter", {}) or "cellView" in cell.metadata
            # the exercise cells are open for the learner to write in; only the expected-results checks stay folded
            assert folded == nbs.is_expected_cell(cell), cell.source[:80]
            assert ("@title" in cell.source) == folded, cell.source[:80]
    solutions = sum(c.source.count(nbs.BEGIN) for c in nbformat.read(COURSE / name, as_version=4).cells)
    assert text.count("# your code here") >= solutions
