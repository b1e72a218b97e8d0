"""The bench's table of slow cells: what the notebooks' "this cell takes about N min" lines are written from."""
from ftkit import bench


def test_slow_cells_are_listed_slowest_first_with_their_first_line():
    row = {"notebook": "02_setfit_few_shot.ipynb", "RSS MB after cell": {"13": 1450, "8": 1200},
           "slow cells": [{"cell": 8, "s": 75.0, "first line": "before_model = models.load_sentence_model(cfg)"},
                          {"cell": 13, "s": 1020.4, "first line": "for k in KS:"}]}
    lines = bench.slow_cells_markdown([row]).splitlines()
    assert lines[2:] == ["| 02_setfit_few_shot.ipynb | 13 | 1020 s (17.0 min) | 1,450 MB | `for k in KS:` |",
                         "| 02_setfit_few_shot.ipynb | 8 | 75 s (1.2 min) | 1,200 MB | "
                         "`before_model = models.load_sentence_model(cfg)` |"]
    assert bench.slow_cells_markdown([{**row, "slow cells": []}]).count("\n") == 2      # the header only


def test_first_line_is_the_first_non_blank_line_cut_at_80_characters():
    assert bench.first_line("\n\n# Driven in code\npanel.click()") == "# Driven in code"
    assert bench.first_line("") == "" and len(bench.first_line("x" * 200)) == 80
