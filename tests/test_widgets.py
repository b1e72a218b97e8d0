import plotly.graph_objects as go
import pytest

from ftkit import widgets


def make_panel(fn, plot=None):
    return widgets.Panel(fn, {"rank": widgets.int_slider(4, 1, 64, "rank"),
                              "lr": widgets.log_slider(1e-4, -6, -2, "learning rate")}, plot=plot)


def test_click_calls_the_function_with_the_control_values():
    seen = []
    panel = make_panel(lambda rank, lr: seen.append((rank, lr)) or rank * 2)
    assert panel.click(rank=8) == 16
    assert seen == [(8, pytest.approx(1e-4))]
    assert panel.progress.description == "done" and panel.results == [16]


def test_the_progress_callback_is_passed_when_asked_for():
    def fn(rank, lr, progress):
        progress(0.5)
        return rank

    panel = make_panel(fn)
    panel.click()
    assert panel.progress.value == 1.0


def test_an_out_of_range_value_is_an_error_not_a_silent_clip():
    panel = make_panel(lambda rank, lr: rank)
    with pytest.raises(ValueError, match="rank must be in 1..64, got 100"):
        panel.click(rank=100)
    with pytest.raises(ValueError, match="no control 'alpha'"):
        panel.set(alpha=1)


def test_an_error_in_the_run_is_shown_and_re_raised():
    def fn(rank, lr):
        raise ValueError("rank too big")

    panel = make_panel(fn)
    with pytest.raises(ValueError, match="rank too big"):
        panel.click()
    assert panel.progress.description == "error" and not panel.button.disabled


def test_an_error_is_still_caught_inside_ipython_where_output_swallows_it(monkeypatch):
    # In a kernel, ipywidgets' Output shows an exception itself and suppresses it;
    # the panel must still record it instead of failing on a missing result.
    from ipywidgets.widgets import widget_output

    shown = []
    fake_shell = type("Shell", (), {"showtraceback": lambda self, exc, tb_offset=0: shown.append(exc[0])})()
    monkeypatch.setattr(widget_output, "get_ipython", lambda: fake_shell)

    def fn(rank, lr):
        raise ValueError("rank too big")

    panel = make_panel(fn)
    with pytest.raises(ValueError, match="rank too big"):
        panel.click()
    assert shown == [] and panel.progress.description == "error"


def test_the_plot_is_a_plain_figure_redrawn_after_each_run():
    drawn = []

    def plot(p):
        fig = go.Figure(go.Bar(y=p.results))
        drawn.append(fig)
        return fig

    panel = make_panel(lambda rank, lr: rank, plot=plot)
    panel.click(rank=2)
    panel.click(rank=3)
    assert len(drawn) == 2 and list(drawn[-1].data[0].y) == [2, 3]
    assert type(drawn[-1]) is go.Figure


def test_a_rich_result_is_shown_in_the_panel_itself():
    """In a browser, a learner who presses Ask sees the answer in the panel; a test gets it from click()."""
    from IPython.display import HTML

    panel = widgets.Panel(lambda question: HTML(f"<b>{question}?</b>"), {"question": widgets.int_slider(1, 0, 3, "q")},
                  button="Ask")
    assert panel.click(question=2).data == "<b>2?</b>"
    shown = [o["data"]["text/html"] for o in panel.output.outputs]
    assert shown == ["<b>2?</b>"]
    panel.click(question=3)                                   # the next run replaces it
    assert [o["data"]["text/html"] for o in panel.output.outputs] == ["<b>3?</b>"]
