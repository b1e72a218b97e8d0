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


# --------------------------------------------------------------------------- one progress bar per panel run
# A tiny training run (a 1-block BERT with random weights, 16 sentences), as source: the Jupyter test runs it too.
TINY_RUN = '''
from datasets import Dataset
from transformers import BertConfig, BertForSequenceClassification

from ftkit import models, train, widgets

tok = models.load_tokenizer("encoder", cfg)
sentences = Dataset.from_dict({"text": [f"sentence number {i} is {'good' if i % 2 else 'bad'}" for i in range(16)],
                               "label": [i % 2 for i in range(16)]})


def tiny_run(steps, progress=None):
    encoded = sentences.map(lambda b: tok(b["text"]), batched=True, remove_columns=["text"])  # a datasets bar, if on
    model = BertForSequenceClassification(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=64))
    result = train.fit(model, encoded, encoded, cfg, name="tiny", tokenizer=tok, max_steps=steps, progress=progress,
                       per_device_train_batch_size=4, logging_steps=1)
    print(f"trained {result.steps} steps, eval loss {result.metrics['loss']:.2f}")
    return result.numbers_only()
'''


@pytest.fixture()
def tiny_run(cfg):
    namespace = {"cfg": cfg}
    exec(TINY_RUN, namespace)
    return namespace["tiny_run"]


@pytest.fixture()
def as_in_jupyter(monkeypatch):
    """The Trainer's notebook display (HTML bar and "Step / Training Loss" table), and `datasets` bars turned on."""
    import datasets
    from transformers import trainer as hf_trainer
    from transformers.utils.notebook import NotebookProgressCallback

    monkeypatch.setattr(hf_trainer, "DEFAULT_PROGRESS_CALLBACK", NotebookProgressCallback)
    datasets.enable_progress_bars()
    yield
    datasets.disable_progress_bars()


def watch(panel) -> list:
    seen = []
    panel.progress.observe(lambda change: seen.append(round(change["new"], 3)), "value")
    return seen


def test_a_panel_run_shows_only_its_own_bar_fed_by_the_trainer(tiny_run, as_in_jupyter, capsys):
    import datasets

    panel = widgets.Panel(lambda steps: tiny_run(steps), {"steps": widgets.int_slider(2, 1, 8, "steps")})
    seen = watch(panel)
    capsys.readouterr()
    assert panel.click(steps=4).steps == 4
    shown = capsys.readouterr()
    assert shown.err == "" and shown.out.startswith("trained 4 steps, eval loss ") and shown.out.count("\n") == 1
    assert seen == [0.25, 0.5, 0.75, 1.0]                   # one report per optimizer step, then done
    assert datasets.is_progress_bar_enabled()                # the run turned them off for itself only


def test_a_panel_function_can_share_its_bar_between_training_and_other_work(tiny_run, as_in_jupyter, capsys):
    def train_then_score(steps, progress):
        result = tiny_run(steps, progress=widgets.scaled(progress, 0.0, 0.5))
        progress(0.75)                                       # e.g. generation and scoring
        return result

    panel = widgets.Panel(train_then_score, {"steps": widgets.int_slider(2, 1, 8, "steps")})
    seen = watch(panel)
    capsys.readouterr()
    panel.click(steps=2)
    assert seen == [0.25, 0.5, 0.75, 1.0] and capsys.readouterr().err == ""
    with pytest.raises(ValueError, match="need 0 <= start <= end <= 1"):
        widgets.scaled(print, 0.5, 0.2)


def test_outside_a_panel_the_trainer_keeps_its_own_display(tiny_run, as_in_jupyter, capsys):
    tiny_run(2)
    shown = capsys.readouterr()
    assert "<IPython.core.display.HTML object>" in shown.out and "Map" in shown.err   # printed outside Jupyter


def _run_in_jupyter(tmp_path, sources):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    NotebookClient(nb, timeout=300, kernel_name="python3", store_widget_state=True,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    widgets_state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    return {model_id: s["state"] for model_id, s in widgets_state.items()}


def test_in_jupyter_a_panel_run_leaves_one_finished_bar_and_its_result(tmp_path):
    """In a real kernel: what the panel's output area holds after a click, and where its bar stopped."""
    states = _run_in_jupyter(tmp_path, [
        "import ftkit\nimport datasets\ncfg = ftkit.setup('smoke', verbose=False)\ndatasets.enable_progress_bars()",
        TINY_RUN,
        "panel = widgets.Panel(tiny_run, {'steps': widgets.int_slider(2, 1, 8, 'steps')})\npanel",
        "panel.click(steps=8)\nprint(panel.progress.value, panel.progress.description)"])
    outputs = [s["outputs"] for s in states.values() if s.get("_model_name") == "OutputModel" and s.get("outputs")]
    assert len(outputs) == 1, outputs                        # the run's output area; the figure area stays empty
    assert [o["output_type"] for o in outputs[0]] == ["stream"], outputs[0]     # no HTML bar, no loss table
    assert outputs[0][0]["text"].startswith("trained 8 steps, eval loss ")
    bars = [s for s in states.values() if s.get("_model_name") == "FloatProgressModel"]
    assert [(b["value"], b["description"]) for b in bars] == [(1.0, "done")]
