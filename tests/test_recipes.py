"""`python -m ftkit train`: each task in the smoke profile, bad input, resume, and a 2-process DDP run."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ftkit import recipes

SMOKE = ["--profile", "smoke"]


def train(*args, timeout=600, env=None):
    return subprocess.run([sys.executable, "-m", "ftkit", "train", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def train_here(capsys, *args) -> tuple[int, str]:
    """`ftkit train` in this process: the command line's own code (`recipes.main`) without starting an interpreter
    and importing torch again, about 7 s a run. The command itself runs as a subprocess below (a killed run, DDP).
    Returns the exit status and stderr."""
    code = recipes.main([str(a) for a in args])
    return code, capsys.readouterr().err


def refused(capsys, *args) -> str:
    """stderr of a run that must end with status 2 and one clear line, no traceback."""
    code, err = train_here(capsys, *args)
    assert code == 2 and "Traceback" not in err, err[-2000:]
    return err


def weights(folder: Path) -> dict:
    return load_file(str(folder / "model" / "model.safetensors"))


@pytest.mark.parametrize("task, extra", [
    ("classify", ["--data", "rotten_tomatoes", "--frozen", "4"]),
    ("ner", ["--data", "wikigold"]),
    ("mlm", ["--data", "medquad_corpus", "--scheme", "token"]),
    ("sft", ["--data", "dolly", "--lora-rank", "4", "--max-length", "64", "--batch-size", "4"]),  # 135M LM: small
])
def test_each_task_trains_and_writes_its_outputs_once(tmp_path, capsys, task, extra):
    out = tmp_path / task
    code, err = train_here(capsys, task, *extra, *SMOKE, "--max-steps", "2", "--output-dir", out)
    assert code == 0, err[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["seconds"] > 0 and metrics["profile"] == "smoke"
    assert json.loads((out / "run.json").read_text())["task"] == task
    saved = sorted(p.name for p in (out / "model").iterdir())
    assert ("adapter_model.safetensors" if task == "sft" else "model.safetensors") in saved
    assert "tokenizer.json" in saved and not [p for p in saved if p.endswith((".bin", ".pt", ".pth"))]
    if task == "sft":
        assert metrics["metrics"]["held-out loss"] > 0


def test_user_files_with_their_own_column_names_and_string_labels(tmp_path, capsys):
    rows = [{"review": t, "stars": s} for t, s in [("great fun", "good"), ("dull and long", "bad")] * 10]
    f = tmp_path / "mine.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "run"
    code, err = train_here(capsys, "classify", "--train-file", f, "--text-column", "review", "--label-column", "stars",
                           *SMOKE, "--max-steps", "1", "--output-dir", out)
    assert code == 0, err[-3000:]
    assert json.loads((out / "model" / "config.json").read_text())["id2label"] == {"0": "bad", "1": "good"}


@pytest.mark.parametrize("args, message", [
    (["classify", "--data", "imdb"], "unknown dataset 'imdb'"),
    (["classify", "--data", "wikigold"], "'wikigold' is a ner dataset; the classify task needs classification"),
    (["ner", "--data", "wikigold", "--lora-rank", "8"], "--lora-rank applies to classify and sft"),
    (["mlm", "--data", "medquad_corpus", "--frozen", "2"], "--frozen applies to classify and ner"),
    (["classify", "--data", "rotten_tomatoes", "--model", "./no/such/model"], "model folder './no/such/model' does not"),
    (["classify"], "exactly one of them, none was given"),
    (["classify", "--data", "rotten_tomatoes", "--train-file", "mine.jsonl"], "exactly one of them, not both"),
    (["classify", "--data", "rotten_tomatoes", "--resume"], "holds no ftkit run to continue"),
])
def test_bad_input_is_one_clear_line(tmp_path, capsys, args, message):
    assert message in refused(capsys, *args, *SMOKE, "--output-dir", tmp_path / "out")


def test_unknown_task_and_missing_columns(tmp_path, capsys):
    done = train("translate", "--output-dir", str(tmp_path))
    assert done.returncode == 2 and "invalid choice: 'translate'" in done.stderr
    f = tmp_path / "mine.csv"
    f.write_text("sentence,y\nfine,1\nbad,0\n")
    err = refused(capsys, "classify", "--train-file", f, *SMOKE, "--output-dir", tmp_path / "out")
    assert "has no column 'text' (columns: ['sentence', 'y'])" in err


def test_csv_texts_and_labels_that_look_like_missing_values_are_kept(tmp_path):
    """pandas' default markers would read "NA", "None" and "null" as missing; only an empty cell is."""
    from ftkit.recipes import read_file

    f = tmp_path / "mine.csv"
    f.write_text("text,label\nNA,None\nnull,yes\n")
    ds = read_file(str(f), "--train-file", "csv")
    assert ds["text"] == ["NA", "null"] and ds["label"] == ["None", "yes"]


def test_an_output_dir_with_another_run_is_refused_without_overwrite(tmp_path, capsys):
    out = tmp_path / "out"
    args = ["classify", "--data", "rotten_tomatoes", *SMOKE, "--max-steps", "1", "--output-dir", str(out)]
    assert train_here(capsys, *args)[0] == 0
    again = refused(capsys, *args[:-2], "--learning-rate", "1e-3", "--output-dir", out)
    assert "already holds a different ftkit run; pass --overwrite" in again
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "thesis.txt").write_text("do not delete")
    assert "files that are not an ftkit run" in refused(capsys, *args[:-2], "--output-dir", mine)
    assert (mine / "thesis.txt").read_text() == "do not delete"
    assert train_here(capsys, *args[:-2], "--learning-rate", "1e-3", "--output-dir", out, "--overwrite")[0] == 0


def test_last_complete_checkpoint_skips_a_save_that_was_killed(tmp_path):
    for step, complete in ((2, True), (4, True), (6, False)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert recipes.last_complete_checkpoint(tmp_path).name == "checkpoint-4"
    assert recipes.last_complete_checkpoint(tmp_path / "nothing") is None


def test_a_killed_run_resumes_from_its_checkpoint_and_ends_at_the_same_step(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["classify", "--data", "rotten_tomatoes", *SMOKE, "--max-steps", "6", "--save-steps", "2",
            "--output-dir", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "ftkit", "train", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while recipes.last_complete_checkpoint(out / "checkpoints") is None:
        assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "metrics.json").exists()                       # it really was interrupted
    code, err = train_here(capsys, *args, "--resume")
    assert code == 0, err[-3000:]
    state = json.loads((recipes.last_complete_checkpoint(out / "checkpoints") / "trainer_state.json").read_text())
    assert json.loads((out / "metrics.json").read_text())["steps"] == 6 == state["global_step"]
    changed = refused(capsys, *args[:-4], "--max-steps", "8", "--save-steps", "2", "--output-dir", out, "--resume")
    assert "started with other settings (max_steps)" in changed


def test_two_processes_with_ddp_match_one_process_with_the_same_global_batch(tmp_path):
    """Two CPU processes (gloo): each takes 4 of every 8 examples and DDP averages the gradients, so with dropout off
    both runs take the same steps on the same batches, up to floating-point summation order. Exact equality is not
    possible, and an elementwise bound is the wrong test: Adam divides each update by the gradient's own size, so
    for weights whose gradient is ~0 that summation noise can flip a step (up to 2 x lr). The whole-model distance
    is what must be small: DDP lands at least 10x closer to the one-process run than a run that differs in earnest
    (one process at half the global batch)."""
    common = ["classify", "--data", "rotten_tomatoes", *SMOKE, "--max-steps", "3", "--dropout", "0",
              "--learning-rate", "1e-4"]
    one = train(*common, "--batch-size", "8", "--output-dir", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-3000:]
    # accelerate 1.15's --cpu flag alone starts ONE process (its simple launcher); the torchrun-based launcher is
    # --multi_gpu, and ACCELERATE_USE_CPU=1 makes its processes CPU processes talking over gloo.
    two = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                          "-m", "ftkit", "train", *common, "--batch-size", "4", "--output-dir", str(tmp_path / "two")],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "ACCELERATE_USE_CPU": "1"})
    assert two.returncode == 0, two.stderr[-3000:]
    assert "on 2 process(es)" in two.stdout and two.stdout.count("wrote ") == 1        # written once
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["steps"] == 3
    # the same eval rows, split over two processes and gathered: the same loss (not 2x, as the Trainer's
    # loss scaling for token-averaging models made it for BERT heads; see train.average_loss_per_batch)
    losses = [json.loads((tmp_path / n / "metrics.json").read_text())["metrics"]["loss"] for n in ("one", "two")]
    assert losses[1] == pytest.approx(losses[0], rel=1e-3), losses
    half = train(*common, "--batch-size", "4", "--output-dir", str(tmp_path / "half"))
    assert half.returncode == 0, half.stderr[-3000:]
    a, b, c = (weights(tmp_path / n) for n in ("one", "two", "half"))

    def distance(x, y):
        return float(torch.sqrt(sum(((x[k] - y[k]) ** 2).sum() for k in x)))

    ddp, different = distance(a, b), distance(a, c)
    assert ddp < 0.1 * different, f"DDP is {ddp:.2e} from one process; half the batch is {different:.2e}"


@pytest.mark.parametrize("name", ["single_gpu", "multi_gpu_ddp", "fsdp", "deepspeed_zero2"])
def test_the_shipped_accelerate_configs_are_valid_for_accelerate(name):
    """Parsed by accelerate's own loader (unknown keys or values are refused there)."""
    from accelerate.commands.config.config_args import load_config_from_file

    path = Path(__file__).resolve().parent.parent / "configs" / "accelerate" / f"{name}.yaml"
    config = load_config_from_file(str(path))
    expected = {"single_gpu": "NO", "multi_gpu_ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed_zero2": "DEEPSPEED"}[name]
    assert config.num_processes >= 1 and config.distributed_type.value == expected


def test_a_tag_only_in_the_eval_file_is_one_clear_line_before_anything_is_written(tmp_path, capsys):
    rows = [{"tokens": ["Ada", "Lovelace", "wrote", "."], "tags": ["B-PER", "I-PER", "O", "O"]}] * 8
    train_file, eval_file = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    train_file.write_text("\n".join(json.dumps(r) for r in rows))
    eval_file.write_text(json.dumps({"tokens": ["Acme", "Corp", "hired", "Ada"],
                                     "tags": ["B-ORG", "I-ORG", "O", "B-PER"]}))
    out = tmp_path / "out"
    err = refused(capsys, "ner", "--train-file", train_file, "--eval-file", eval_file, *SMOKE, "--output-dir", out)
    assert "tag 'B-ORG' in split 'test' (row 0) is not in the model's tag set ['O', 'B-PER', 'I-PER']" in err
    assert not out.exists()                                  # refused before the run folder was made


def test_a_max_length_that_cuts_every_response_is_one_clear_line_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "out"
    err = refused(capsys, "sft", "--data", "dolly", "--max-length", "8", *SMOKE, "--output-dir", out)
    assert "training data: max_length=8 cuts every response off: all 64 rows lose every response token" in err
    assert "keeps at least one response token in every row" in err and not out.exists()


def test_unreadable_user_files_are_one_clear_line_naming_the_file(tmp_path, capsys):
    good = [{"tokens": ["Ada", "Lovelace", "wrote", "."], "tags": ["B-PER", "I-PER", "O", "O"]}] * 4
    files = {"good": "\n".join(json.dumps(r) for r in good), "empty": "", "blank": "\n\n",
             "broken": json.dumps(good[0]) + '\n{"tokens": ["Ada"], "tags": ["B-PER"],\n',
             "not_object": json.dumps(good[0]) + "\n[1, 2]\n",
             "other_columns": json.dumps({"words": ["Ada"], "labels": ["B-PER"]})}
    for name, text in files.items():
        (tmp_path / f"{name}.jsonl").write_text(text)

    def ner_run(train, *extra):
        return refused(capsys, "ner", "--train-file", tmp_path / f"{train}.jsonl", *extra, *SMOKE,
                       "--output-dir", tmp_path / "out")

    assert "--train-file" in ner_run("empty") and "empty.jsonl' is empty: it needs at least one row" in ner_run("empty")
    err = ner_run("good", "--eval-file", tmp_path / "blank.jsonl")
    assert "--eval-file" in err and "blank.jsonl' is empty: it needs at least one row" in err
    err = ner_run("broken")
    assert "broken.jsonl' line 2 is not valid JSON" in err and "one complete JSON object per line" in err
    assert "not_object.jsonl' line 2 is a JSON list, not an object" in ner_run("not_object")
    header_only = tmp_path / "header.csv"
    header_only.write_text("tokens,tags\n")
    assert "header.csv' has a header line but no rows" in refused(capsys, "ner", "--train-file", header_only, *SMOKE,
                                                                   "--output-dir", tmp_path / "out")
    err = ner_run("good", "--eval-file", tmp_path / "other_columns.jsonl")
    assert "--eval-file" in err and "other_columns.jsonl' has no column 'tokens' (columns: ['words', 'labels'])" in err
    assert "--tokens-column NAME, --tags-column NAME" in err
    # an extra column in one file only is left out, not a cast error between the two files
    extra = tmp_path / "extra.jsonl"
    extra.write_text("\n".join(json.dumps({**r, "source": "wiki"}) for r in good))
    ds = recipes.load_task_data(recipes.parser().parse_args(
        ["ner", "--train-file", str(tmp_path / "good.jsonl"), "--eval-file", str(extra), "--output-dir", "x"]))
    assert ds["test"].column_names == ["tokens", "tags"] and ds["test"].num_rows == 4


def test_ner_files_with_tag_ids_or_one_string_of_words_are_one_clear_line(tmp_path, capsys):
    ids, text = tmp_path / "ids.jsonl", tmp_path / "text.jsonl"
    ids.write_text("\n".join(json.dumps({"tokens": ["Ada", "Lovelace"], "tags": [1, 2]}) for _ in range(4)))
    text.write_text("\n".join(json.dumps({"tokens": "Ada Lovelace", "tags": ["B-PER", "I-PER"]}) for _ in range(4)))
    err = refused(capsys, "ner", "--train-file", ids, *SMOKE, "--output-dir", tmp_path / "out")
    assert "the tags are integer ids" in err and "int2str" in err
    err = refused(capsys, "ner", "--train-file", text, *SMOKE, "--output-dir", tmp_path / "out")
    assert "the words are one string ('Ada Lovelace'), but a list of words is expected" in err
