"""Student copies of the course notebooks (`python -m ftkit student OUT_DIR`), and folding of solution cells.

An exercise cell is a code cell holding one or more solution regions:

    ### BEGIN SOLUTION
    ...the reference code...
    ### END SOLUTION

A student copy replaces each region by the placeholder, with the region's indentation kept: inside a function
the region must be the whole body (after the docstring) and becomes `...  # your code here`; elsewhere each name
the region binds becomes `name = ...  # your code here` (a region that binds nothing becomes the bare
placeholder). Outputs and execution counts are cleared, solution cells are unfolded, relative links in
markdown are rewritten for the copy's folder, and a task's note on the folded solution cell below it ("*If the cell
below is folded ...*") becomes a pointer to the course notebook, which holds the solution.

Before writing, every notebook is checked statically so that a learner's Run All in a copy completes:
a check call passes the name the region defines (or the function/class around it), no check is called outside an
exercise cell, and no later cell uses a name an exercise cell defines (it would be the learner's unfinished answer).
Violations are ValueErrors that name the notebook, the cell and what to do. See README.md in this folder.
"""
from __future__ import annotations

import ast
import copy
import os
import re
import textwrap
from pathlib import Path

import nbformat

from .core import PLACEHOLDER

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
SOLUTION_TITLE = "# @title Reference solution: try the exercise first"    # what a folded cell shows
EXPECTED_TITLE = "# @title Expected results: the checks (open to see the code)"
EXPECTED_CALL = ".report_and_assert()"      # the last cell of a notebook: results.Expected's printout
_TITLE = re.compile(r"#\s*@title\b")
_CHECK_NAME = re.compile(r"q[1-9][0-9]*")
_LINK = re.compile(r"(\]\()([^)\s]+)(\))")
# The course notebook's note on its folded solution cell; a student copy has no solution under the task
_FOLDED_NOTE = re.compile(r"\*If the cell below is folded\b[^*]*\*")


def regions(source: str, where: str = "cell") -> list[tuple[int, int, str]]:
    """The solution regions of a cell's source: (BEGIN line index, END line index, indentation), 0-based.

    ValueError for an unclosed, nested, empty or mis-indented region, or a marker that shares its line.
    """
    lines, found, start = source.split("\n"), [], None
    for i, line in enumerate(lines):
        marker = line.strip()
        if marker == BEGIN:
            if start is not None:
                raise ValueError(f"{where}, line {i + 1}: {BEGIN} inside the region opened on line {start + 1}; "
                                 f"close that one with {END} first")
            start = i
        elif marker == END:
            if start is None:
                raise ValueError(f"{where}, line {i + 1}: {END} without a {BEGIN} before it")
            if _indent(line) != _indent(lines[start]):
                raise ValueError(f"{where}, lines {start + 1}-{i + 1}: {BEGIN} and {END} must have the same "
                                 f"indentation (that of the code between them)")
            if not any(s.strip() and not s.strip().startswith("#") for s in lines[start + 1:i]):
                raise ValueError(f"{where}, lines {start + 1}-{i + 1}: the solution region holds no code")
            found.append((start, i, _indent(line)))
            start = None
        elif BEGIN in line or END in line:
            raise ValueError(f"{where}, line {i + 1}: put {marker!r}'s marker on a line of its own")
    if start is not None:
        raise ValueError(f"{where}, line {start + 1}: {BEGIN} is never closed with {END}")
    return found


def is_exercise_cell(cell) -> bool:
    return cell.cell_type == "code" and any(line.strip() == BEGIN for line in cell.source.split("\n"))


def is_expected_cell(cell) -> bool:
    """The expected-results cell: for CI first, so its code is folded and only its printout shows."""
    return cell.cell_type == "code" and EXPECTED_CALL in cell.source


def fold_title(cell) -> str | None:
    """The title a folded cell of this kind shows, or None for a cell that stays open."""
    return SOLUTION_TITLE if is_exercise_cell(cell) else EXPECTED_TITLE if is_expected_cell(cell) else None


def is_folded(cell, title: str = SOLUTION_TITLE) -> bool:
    """Folded for JupyterLab (source_hidden), Jupyter Notebook and Colab (cellView form with a # @title line)."""
    return (cell.metadata.get("jupyter", {}).get("source_hidden") is True and cell.metadata.get("cellView") == "form"
            and cell.source.split("\n", 1)[0] == title)


def fold(cell, title: str = SOLUTION_TITLE) -> None:
    """Fold a cell in place: the title line first, then the metadata that hides the code."""
    first, _, rest = cell.source.partition("\n")
    cell.source = title + "\n" + (rest if _TITLE.match(first) else cell.source)
    cell.metadata.setdefault("jupyter", {})["source_hidden"] = True
    cell.metadata["cellView"] = "form"


def unfold(cell) -> None:
    first, _, rest = cell.source.partition("\n")
    if _TITLE.match(first):
        cell.source = rest
    cell.metadata.pop("cellView", None)
    jupyter = cell.metadata.get("jupyter", {})
    jupyter.pop("source_hidden", None)
    if "jupyter" in cell.metadata and not jupyter:
        del cell.metadata["jupyter"]


def student_source(source: str, where: str = "cell") -> str:
    """The cell's source with every solution region replaced by the placeholder (see the module docstring)."""
    lines, spans = source.split("\n"), regions(source, where)
    tree = _parse(source, where)
    out, placeholders, last = [], [], 0
    for begin, end, indent in spans:
        body = textwrap.dedent("\n".join(lines[begin + 1:end]))
        inside_function = _innermost_function(tree, _first_code_line(lines, begin, end)) is not None
        names = [] if inside_function else _bound_names(_parse(body, f"{where}, lines {begin + 2}-{end}"))
        out += lines[last:begin]
        placeholders.append((len(out) + 1, inside_function))
        out += [f"{indent}{name} = {PLACEHOLDER}" for name in names] or [f"{indent}{PLACEHOLDER}"]
        last = end + 1
    out += lines[last:]
    student = "\n".join(out)
    student_tree = _parse(student, f"{where} (student copy)")
    for line, inside_function in placeholders:
        if inside_function:
            _require_whole_body(student_tree, line, where)
    return student


def student_notebook(nb, name: str, course_dir: Path, out_dir: Path):
    """A student copy of the notebook `nb` (not modified). ValueError if a learner's Run All could break."""
    check_run_all(nb, name)
    nb = copy.deepcopy(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            cell.source = _FOLDED_NOTE.sub(_solution_elsewhere(name, course_dir, out_dir),
                                           _relink(cell.source, course_dir, out_dir))
        elif cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            if is_exercise_cell(cell):
                unfold(cell)
                cell.source = student_source(cell.source, f"{name} cell {i}")
    nb.metadata.pop("widgets", None)
    nbformat.validate(nb)
    return nb


def _solution_elsewhere(name: str, course_dir: Path, out_dir: Path) -> str:
    """What a student copy says instead of the course notebook's note on the folded solution cell below a task."""
    link = os.path.relpath(Path(course_dir) / name, out_dir).replace(os.sep, "/")
    return (f"*The cell below is yours to complete. The reference solution is in the course notebook with solutions,\n"
            f"[{name}]({link}), in the folded cell under the same heading: try first.*")


def student_copy_text(path: Path, out_dir: Path) -> str:
    """The exact text `python -m ftkit student` writes for the course notebook `path` into `out_dir`."""
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    text = nbformat.writes(student_notebook(nb, path.name, path.parent, Path(out_dir)))
    return text if text.endswith("\n") else text + "\n"


def write_student_copies(course_dir: str | Path = "course", out_dir: str | Path = "course/student") -> list[Path]:
    """Write a student copy of every notebook in `course_dir` into `out_dir`; returns the paths written.

    Nothing is written unless every notebook passes the Run-All checks (ValueError naming the first problem).
    """
    course_dir, out_dir = Path(course_dir), Path(out_dir)
    notebooks = sorted(course_dir.glob("*.ipynb"))
    if not notebooks:
        raise ValueError(f"no notebooks in {course_dir}/: run from the repository root or pass --course DIR")
    if out_dir.resolve() == course_dir.resolve():
        raise ValueError(f"{out_dir} is the course folder itself: the copies would overwrite the solutions; "
                         f"choose another folder, e.g. {course_dir}/student")
    texts = {path.name: student_copy_text(path, out_dir) for path in notebooks}
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in texts.items():
        (out_dir / name).write_text(text)
        written.append(out_dir / name)
    return written


def fold_solution_cells(path: str | Path) -> bool:
    """Fold every exercise cell and the expected-results cell of a course notebook in place (idempotent); True if
    the file changed."""
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    changed = False
    for cell in nb.cells:
        title = fold_title(cell) if cell.cell_type == "code" else None
        if title and not is_folded(cell, title):
            fold(cell, title)
            changed = True
    if changed:
        nbformat.write(nb, path)
    return changed


def check_run_all(nb, name: str) -> None:
    """The static Run-All checks for a student copy (see the module docstring); ValueError on the first problem."""
    defined_by: dict[str, int] = {}         # name -> the exercise cell that defines it
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        where = f"{name} cell {i} ({cell.source.strip().splitlines()[0][:60] if cell.source.strip() else 'empty'})"
        tree = _parse(cell.source, where)
        exercise = is_exercise_cell(cell)
        spans = regions(cell.source, where) if exercise else []
        in_region = {line for begin, end, _ in spans for line in range(begin + 2, end + 1)}    # 1-based
        calls = _check_calls(tree)
        if exercise:
            _require_placeholder_arguments(calls, tree, spans, where)
        elif calls:
            raise ValueError(f"{where}: `{calls[0][0]}` is called outside an exercise cell; in a student copy it "
                             f"would check the reference code. Call checks only in the cell that holds the solution "
                             f"region")
        used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
                and n.lineno not in in_region}          # a solution may use an earlier answer: it is replaced
        bound = set(_bound_names(tree, imports=True))
        answers_used = sorted((used - bound) & defined_by.keys())
        if answers_used:
            first = answers_used[0]
            raise ValueError(f"{where} uses `{first}`, which the exercise in cell {defined_by[first]} defines: in a "
                             f"student copy that is the learner's unfinished answer, so Run All would break here. "
                             f"Compute it in a cell of its own, or give the exercise's name another name "
                             f"(e.g. `my_{first}`)")
        for bound_name in bound:
            defined_by.pop(bound_name, None)
        if exercise:
            for s in tree.body:
                if not isinstance(s, (ast.Import, ast.ImportFrom)) or _within(s, in_region):
                    defined_by.update({n: i for n in _bound_names(ast.Module(body=[s], type_ignores=[]),
                                                                  imports=True)})


def _require_placeholder_arguments(calls, tree, spans, where) -> None:
    if not calls:
        raise ValueError(f"{where}: an exercise cell calls its check (e.g. `check.q1(answer)`) as its last line")
    lines_in_regions = {line for begin, end, _ in spans for line in range(begin + 2, end + 1)}
    placeholders = set()
    for s in tree.body:
        if _within(s, lines_in_regions):
            placeholders.update(_bound_names(ast.Module(body=[s], type_ignores=[])))
        elif isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and \
                lines_in_regions & set(range(s.lineno, s.end_lineno + 1)):
            placeholders.add(s.name)
        elif not isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for node in ast.walk(s):    # a region inside an if/with/for at module level
                if isinstance(node, ast.stmt) and node is not s and _within(node, lines_in_regions):
                    placeholders.update(_bound_names(ast.Module(body=[node], type_ignores=[])))
    for text, argument in calls:
        if not (isinstance(argument, ast.Name) and argument.id in placeholders):
            raise ValueError(f"{where}: `{text}` must pass a name the solution region defines, or the function or "
                             f"class whose body holds the region ({', '.join(sorted(placeholders)) or 'none here'}), "
                             f"so that a student copy checks the placeholder")


def _check_calls(tree) -> list[tuple[str, ast.expr | None]]:
    """Calls of the form `X.qN(answer)`: (their text, the first argument)."""
    return [(ast.unparse(node), node.args[0] if node.args else None) for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name) and _CHECK_NAME.fullmatch(node.func.attr)]


def _require_whole_body(tree, line: int, where: str) -> None:
    function = _innermost_function(tree, line)
    body = function.body[1:] if _is_docstring(function.body[0]) else function.body
    if len(body) != 1 or body[0].lineno != line:
        raise ValueError(f"{where}: the solution region inside `def {function.name}` must hold the whole body (after "
                         f"the docstring): a student copy makes it `{PLACEHOLDER}`, and code left around it would "
                         f"run on nothing. Move given code into the docstring, a comment or another function")


def _innermost_function(tree, line: int):
    best = None
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.lineno < line <= node.end_lineno:
            if best is None or node.lineno > best.lineno:
                best = node
    return best


def _first_code_line(lines, begin, end) -> int:
    """The 1-based line number of the first code line inside a region."""
    return next(i + 1 for i in range(begin + 1, end) if lines[i].strip() and not lines[i].strip().startswith("#"))


def _bound_names(tree, imports: bool = False) -> list[str]:
    """Names a module-level piece of code binds, in order (not inside functions, classes or comprehensions)."""
    names: list[str] = []

    def visit(node):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.append(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
            for d in node.decorator_list:
                visit(d)
            return
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            if imports:
                names.extend((a.asname or a.name).split(".")[0] for a in node.names)
            return
        elif isinstance(node, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            return
        for child in ast.iter_child_nodes(node):
            visit(child)

    for statement in tree.body:
        visit(statement)
    return list(dict.fromkeys(names))


def _within(node, lines: set[int]) -> bool:
    return bool(lines) and node.lineno in lines and node.end_lineno in lines


def _is_docstring(statement) -> bool:
    return isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant) \
        and isinstance(statement.value.value, str)


def _parse(source: str, where: str):
    """Parse a cell as Python, after IPython's own translation of magics (`%pip`, `!ls`) when IPython is here."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager

        source = TransformerManager().transform_cell(source)
    except ImportError:
        pass
    try:
        return ast.parse(source)
    except SyntaxError as exc:
        raise ValueError(f"{where}: not valid Python (line {exc.lineno}: {exc.msg})") from exc


def _indent(line: str) -> str:
    return line[:len(line) - len(line.lstrip())]


def _relink(markdown: str, course_dir: Path, out_dir: Path) -> str:
    """Relative links of a course notebook, re-pointed from the copy's folder (notebooks keep their name: the
    copy of a course notebook sits beside it in the student folder)."""
    def repoint(match):
        target = match.group(2)
        path = target.split("#", 1)[0]
        if not path or re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:|/", target) or \
                (path.endswith(".ipynb") and "/" not in path and (course_dir / path).exists()):
            return match.group(0)
        moved = os.path.relpath(course_dir / path, out_dir).replace(os.sep, "/")
        return match.group(1) + moved + target[len(path):] + match.group(3)

    return _LINK.sub(repoint, markdown)
