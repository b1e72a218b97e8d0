"""`python -m ftkit bench notebooks`: run course notebooks as a learner's "Run All" does and measure them.

A benchmark, not a test: it records each notebook's wall time and the peak RSS of its kernel (the kernel
process and its children, sampled every 0.2 s), and writes a Markdown table for the README's budgets.
`--memory-limit 2G` tells the notebooks (through FTKIT_MEMORY_LIMIT, read by `ftkit.setup`) that they run on a
machine that small, so they pick their memory-saving settings; the table then says whether each one stayed under.
A second table lists the cells that took over a minute (SLOW_CELL_S), with their seconds and first line: the cells
whose notebook text should say how long they take. Cell numbers count every cell from 0, markdown included.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

COURSE = Path(__file__).resolve().parent.parent / "course"
SLOW_CELL_S = 60


def kernel_rss(pid: int) -> int:
    """Bytes resident in the kernel process and all its children (e.g. a subprocess a cell starts)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        return proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
    except psutil.Error:
        return 0


def run_notebook(path: Path, profile: str, memory_limit: str | None = None, timeout: int = 7200,
                 save_to: Path | None = None) -> dict:
    """Execute every cell; stop at the first error. Returns wall seconds, peak kernel RSS, the failing cell, and
    each code cell's seconds and the kernel RSS it left behind; `save_to` keeps the executed notebook (its outputs
    are what Expected results quote)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    os.environ["FTKIT_PROFILE"] = profile          # the kernel inherits this process's environment
    if memory_limit:
        os.environ["FTKIT_MEMORY_LIMIT"] = memory_limit
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    peak, stop = {"bytes": 0, "cell": None}, threading.Event()
    current = {"cell": None}

    def kernel_pid():
        return getattr(getattr(client.km, "provisioner", None), "pid", None) if client.km else None

    def sample():
        while not stop.is_set():
            pid = kernel_pid()
            if pid:
                rss = kernel_rss(pid)
                if rss > peak["bytes"]:
                    peak.update(bytes=rss, cell=current["cell"])
            time.sleep(0.2)

    error, start, cell_s, cell_mb = None, time.perf_counter(), {}, {}
    with client.setup_kernel():
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            for i, cell in enumerate(nb.cells):
                if cell.cell_type == "code":
                    current["cell"] = i
                    t0 = time.perf_counter()
                    client.execute_cell(cell, i)
                    cell_s[i] = round(time.perf_counter() - t0, 1)
                    pid = kernel_pid()
                    cell_mb[i] = round(kernel_rss(pid) / 2**20) if pid else None   # what the cell left behind
        except Exception as err:  # noqa: BLE001  (a failing cell is a result to report, not a crash)
            error = f"cell {current['cell']}: {type(err).__name__}: {str(err).strip().splitlines()[-1][:300]}"
        finally:
            stop.set()
            sampler.join()
            pid = kernel_pid()
            if pid and kernel_rss(pid) > peak["bytes"]:          # a last sample: the last cell may be short
                peak.update(bytes=kernel_rss(pid), cell=current["cell"])
            if save_to is not None:
                nbformat.write(nb, save_to)
    slow = [{"cell": i, "s": s, "first line": first_line(nb.cells[i].source)} for i, s in cell_s.items()
            if s >= SLOW_CELL_S]
    return {"notebook": path.name, "profile": profile, "memory limit": memory_limit,
            "wall s": round(time.perf_counter() - start, 1), "peak kernel RSS MB": round(peak["bytes"] / 2**20),
            "peak at cell": peak["cell"], "error": error, "cell s": cell_s, "RSS MB after cell": cell_mb,
            "slow cells": slow}


def first_line(source: str) -> str:
    lines = [line for line in source.splitlines() if line.strip()]
    return lines[0][:80] if lines else ""


def limit_mb(text: str | None) -> float | None:
    from .env import size_mb

    return size_mb(text, "--memory-limit") if text else None


def markdown(rows) -> str:
    lines = ["| notebook | profile | wall | peak kernel RSS | at cell | within limit | error |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        cap = limit_mb(r["memory limit"])
        within = "" if cap is None else ("yes" if r["peak kernel RSS MB"] <= cap else "**no**")
        lines.append(f"| {r['notebook']} | {r['profile']} | {r['wall s']:.0f} s | {r['peak kernel RSS MB']:,} MB | "
                     f"{r['peak at cell']} | {within} | {r['error'] or ''} |")
    return "\n".join(lines) + "\n"


def slow_cells_markdown(rows) -> str:
    """The cells that took SLOW_CELL_S or more, slowest first in each notebook."""
    lines = [f"| notebook | cell | seconds | RSS after | first line (cells over {SLOW_CELL_S} s) |",
             "|---|---|---|---|---|"]
    for r in rows:
        for c in sorted(r.get("slow cells", []), key=lambda c: -c["s"]):
            rss = r["RSS MB after cell"].get(c["cell"], r["RSS MB after cell"].get(str(c["cell"])))
            lines.append(f"| {r['notebook']} | {c['cell']} | {c['s']:.0f} s ({c['s'] / 60:.1f} min) | "
                         f"{'' if rss is None else f'{rss:,} MB'} | `{c['first line'].replace('|', '/')}` |")
    return "\n".join(lines) + "\n"


def bench_notebooks(names=None, profile: str = "cpu", memory_limit: str | None = None,
                    out: Path | None = None) -> list[dict]:
    """Run the named notebooks (default: all in course/, in order) and write `out`.md and `out`.json."""
    limit_mb(memory_limit)           # a malformed limit fails here, before any notebook runs
    paths = sorted(COURSE.glob("*.ipynb")) if not names else [COURSE / n if not Path(n).exists() else Path(n)
                                                             for n in names]
    for p in paths:
        if not p.is_file():
            raise ValueError(f"no notebook {str(p)!r}; give a file name from {COURSE} (e.g. 04_ner_bio_tags.ipynb)")
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for p in paths:
        keep = None if out is None else out.parent / f"{p.stem}.{profile}.executed.ipynb"
        rows.append(run_notebook(p.resolve(), profile, memory_limit, save_to=keep))
        print(markdown(rows[-1:]).splitlines()[-1], flush=True)
        for line in slow_cells_markdown(rows[-1:]).splitlines()[2:]:
            print("  slow cell:", line, flush=True)
    if out is not None:
        out.with_suffix(".md").write_text(markdown(rows) + "\n" + slow_cells_markdown(rows))
        out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    return rows
