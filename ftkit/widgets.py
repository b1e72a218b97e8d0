"""A control panel over a plain function: sliders, a Run button, a progress bar and a plotly figure.

The panel calls `fn(**values)` when Run is clicked. Tests and nbval use the very same path with no
browser: set `panel.controls[...].value`, then `panel.click()`. Figures are plain `go.Figure`
objects shown with `display` (FigureWidget does not render in Colab).

A run shows one progress bar, the panel's own: `train.fit` called during a run feeds it (see `panel_progress`)
and drops the Trainer's bar and loss table, and `datasets`/`transformers` bars are off while it runs.
"""
from __future__ import annotations

import inspect
from contextlib import contextmanager
from contextvars import ContextVar

_PANEL_PROGRESS: ContextVar = ContextVar("ftkit_panel_progress", default=None)


def panel_progress():
    """The running panel's progress callable (fraction 0..1), or None outside a panel run. `train.fit` uses it when
    it is given no `progress` of its own."""
    return _PANEL_PROGRESS.get()


def scaled(progress, start: float, end: float):
    """`progress` mapped onto start..end: a run that trains and then scores gives training 0..0.7, say."""
    if not 0.0 <= start <= end <= 1.0:
        raise ValueError(f"need 0 <= start <= end <= 1, got start={start}, end={end}")
    return lambda fraction: progress(start + (end - start) * max(0.0, min(1.0, float(fraction))))


@contextmanager
def library_bars_off():
    """No `datasets` (map, filter) or `transformers` (loading weights) progress bars inside the block; each one's
    previous state comes back afterwards."""
    import datasets
    from transformers.utils import logging as hf_logging

    datasets_on, transformers_on = datasets.is_progress_bar_enabled(), hf_logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if datasets_on:
            datasets.enable_progress_bars()
        if transformers_on:
            hf_logging.enable_progress_bar()


def int_slider(value: int, lo: int, hi: int, description: str, step: int = 1):
    import ipywidgets as w

    return w.IntSlider(value=value, min=lo, max=hi, step=step, description=description,
                       style={"description_width": "initial"}, continuous_update=False)


def float_slider(value: float, lo: float, hi: float, description: str, step: float = 0.1):
    import ipywidgets as w

    return w.FloatSlider(value=value, min=lo, max=hi, step=step, description=description,
                         style={"description_width": "initial"}, continuous_update=False)


def log_slider(value: float, lo_exp: float, hi_exp: float, description: str):
    """A learning-rate style slider over 10**lo_exp .. 10**hi_exp."""
    import ipywidgets as w

    return w.FloatLogSlider(value=value, base=10, min=lo_exp, max=hi_exp, step=0.25, description=description,
                            style={"description_width": "initial"}, readout_format=".1e", continuous_update=False)


def dropdown(options, value, description: str):
    import ipywidgets as w

    return w.Dropdown(options=options, value=value, description=description, style={"description_width": "initial"})


def _is_rich(obj) -> bool:
    return any(hasattr(obj, a) for a in ("_repr_html_", "_repr_markdown_", "_repr_mimebundle_")) and \
        not isinstance(obj, type)


class Panel:
    """Controls + Run button + progress + output area + figure area around `fn`.

    `fn(**values)` may also take `progress`, a callable that receives a fraction in [0, 1]; a `train.fit` inside
    the run reports to the same bar unless given a `progress` of its own (use `scaled` to share the bar).
    `plot(panel)` (optional) returns a go.Figure drawn after every run, e.g. from a ResultsTable.
    """

    def __init__(self, fn, controls: dict, plot=None, title: str = "", button: str = "Run"):
        import ipywidgets as w

        self.fn, self.plot, self.controls = fn, plot, dict(controls)
        self.button = w.Button(description=button, button_style="primary", icon="play")
        self.progress = w.FloatProgress(value=0.0, min=0.0, max=1.0, description="idle")
        self.output = w.Output()
        self.figure = w.Output()
        self.results: list = []
        self.error: BaseException | None = None
        self._takes_progress = "progress" in inspect.signature(fn).parameters
        header = [w.HTML(f"<b>{title}</b>")] if title else []
        self.widget = w.VBox(header + list(self.controls.values()) + [w.HBox([self.button, self.progress]),
                                                                      self.output, self.figure])
        self.button.on_click(self._on_click)

    @property
    def values(self) -> dict:
        return {name: control.value for name, control in self.controls.items()}

    @property
    def last(self):
        return self.results[-1] if self.results else None

    def set(self, **values) -> "Panel":
        """Set control values by name; an unknown name or an out-of-range value is a ValueError."""
        for name, value in values.items():
            if name not in self.controls:
                raise ValueError(f"no control {name!r}; controls: {list(self.controls)}")
            control = self.controls[name]
            lo, hi = getattr(control, "min", None), getattr(control, "max", None)
            if hasattr(control, "base") and lo is not None:  # FloatLogSlider: min/max are exponents
                lo, hi = control.base ** lo, control.base ** hi
            if lo is not None and not lo <= value <= hi:  # ipywidgets would silently clip it
                raise ValueError(f"{name} must be in {lo}..{hi}, got {value}")
            control.value = value
        return self

    def _report(self, fraction: float):
        self.progress.value = max(0.0, min(1.0, float(fraction)))

    def _run(self, kwargs):
        """`fn(**kwargs)` in the output area, reporting to this panel's bar: (result, error)."""
        result, error = None, None
        token = _PANEL_PROGRESS.set(self._report)
        try:
            # Output.__exit__ swallows exceptions inside IPython (it shows them itself), so the
            # run's error is caught here, inside the block, and re-raised by the caller.
            with self.output:
                try:
                    with library_bars_off():
                        result = self.fn(**kwargs)
                except Exception as err:
                    error = err
        finally:
            _PANEL_PROGRESS.reset(token)
        return result, error

    def _on_click(self, _button=None):
        from IPython.display import display

        self.error = None
        self.output.outputs = ()        # each run shows its own output
        self.button.disabled = True
        self.progress.value, self.progress.description = 0.0, "running"
        kwargs = self.values
        if self._takes_progress:
            kwargs["progress"] = self._report
        try:
            result, run_error = self._run(kwargs)
            if run_error is not None:
                raise run_error
            self.results.append(result)
            if _is_rich(result):        # e.g. an HTML side-by-side: show it in the panel, not only to the caller
                self.output.append_display_data(result)
            if self.plot is not None:
                fig = self.plot(self)
                self.figure.clear_output(wait=True)
                with self.figure:
                    display(fig)
            self.progress.value, self.progress.description = 1.0, "done"
        except Exception as err:  # shown in the panel; click() re-raises it for tests
            self.error = err
            self.progress.description = "error"
            with self.output:
                print(f"{type(err).__name__}: {err}")
        finally:
            self.button.disabled = False

    def click(self, **values):
        """Set `values`, press Run, and return the run's result (raising its error, if any)."""
        self.set(**values)
        self.button.click()
        if self.error is not None:
            raise self.error
        return self.last

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)
