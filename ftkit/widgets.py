"""A control panel over a plain function: sliders, a Run button, a progress bar and a plotly figure.

The panel calls `fn(**values)` when Run is clicked. Tests and nbval use the very same path with no
browser: set `panel.controls[...].value`, then `panel.click()`. Figures are plain `go.Figure`
objects shown with `display` (FigureWidget does not render in Colab).
"""
from __future__ import annotations

import inspect


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

    `fn(**values)` may also take `progress`, a callable that receives a fraction in [0, 1].
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
            # Output.__exit__ swallows exceptions inside IPython (it shows them itself), so the
            # run's error is caught here, inside the block, and re-raised outside it.
            with self.output:
                try:
                    result, run_error = self.fn(**kwargs), None
                except Exception as err:
                    run_error = err
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
