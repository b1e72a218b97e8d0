"""A results table that collects runs across a notebook, and plotly comparisons of them."""
from __future__ import annotations


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
