"""`python -m ftkit train TASK`: the notebooks' recipes as scripts, for your data, your model and your GPUs.

The script calls the same functions as the notebooks (`tuning.fine_tune`, `ner.train_tagger`, `mlm.adapt`,
`instruct.sft`). Your flags become a run profile (batch size, epochs, learning rate, max length) and the model
you name is resolved first (a clear error if it cannot be had), so nothing silently changes underneath.

It runs unchanged under `accelerate launch` (DDP over CPU processes, GPUs or machines): the Trainer reads the
distributed set-up that accelerate provides, and only the main process writes files.
Output: `OUT/model/` (weights or LoRA adapter as safetensors, and the tokenizer), `OUT/metrics.json`,
`OUT/run.json` (the resolved configuration) and `OUT/checkpoints/` (for `--resume`).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import replace
from pathlib import Path

TASKS = ("classify", "ner", "mlm", "sft")
DATA_KIND = {"classify": "classification", "ner": "ner", "mlm": "corpus", "sft": "instruct"}
ROLE = {"classify": "encoder", "ner": "encoder", "mlm": "encoder", "sft": "causal"}
LORA_TASKS = ("classify", "sft")
RUN_FILE = "run.json"
# Flags that may differ between an interrupted run and its --resume; everything else must match.
NOT_THE_RUN = ("resume", "overwrite", "output_dir")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ftkit train", description=__doc__.split("\n\n")[0])
    p.add_argument("task", choices=TASKS)
    d = p.add_argument_group("data: a packaged dataset, or your own JSONL/CSV files")
    d.add_argument("--data", help="a packaged dataset (python -c 'import ftkit.data as d; print(list(d.DATASETS))')")
    d.add_argument("--train-file", help="JSONL or CSV")
    d.add_argument("--eval-file", help="JSONL or CSV (default: 10%% of the training file, held out)")
    d.add_argument("--text-column", default="text")
    d.add_argument("--label-column", default="label")
    d.add_argument("--tokens-column", default="tokens", help="ner: a list of words per row")
    d.add_argument("--tags-column", default="tags", help="ner: IOB2 tags per word")
    d.add_argument("--instruction-column", default="instruction")
    d.add_argument("--response-column", default="response")
    m = p.add_argument_group("model and training")
    m.add_argument("--model", help="a Hub id or a local folder (default: the profile's model for the task)")
    m.add_argument("--profile", choices=("smoke", "cpu", "gpu"), help="default: chosen as in the notebooks")
    m.add_argument("--frozen", type=int, default=0, help="classify/ner: bottom transformer blocks to freeze")
    m.add_argument("--lora-rank", type=int, help="classify/sft: train LoRA adapters of this rank instead")
    m.add_argument("--lora-alpha", type=float, help="LoRA scaling numerator (default: 2 x rank)")
    m.add_argument("--lora-targets", help="comma-separated module names (default, by the model's architecture: "
                   "classify the attention's query and value projections, sft every linear layer of a block)")
    m.add_argument("--scheme", choices=("token", "whole_word"), help="mlm: masking scheme (default whole_word)")
    m.add_argument("--epochs", type=float)
    m.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (overrides --epochs)")
    m.add_argument("--learning-rate", type=float)
    m.add_argument("--batch-size", type=int, help="per process (per GPU)")
    m.add_argument("--max-length", type=int)
    m.add_argument("--seed", type=int, default=42)
    m.add_argument("--dropout", type=float, help="classify/ner: every dropout probability of the encoder and its "
                   "head, under the architecture's own config names (0 turns it off: a deterministic run, e.g. to "
                   "check that a distributed run matches one process)")
    o = p.add_argument_group("output")
    o.add_argument("--output-dir", required=True)
    o.add_argument("--overwrite", action="store_true", help="replace a different run in --output-dir")
    o.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint")
    o.add_argument("--save-steps", type=int, default=50, help="checkpoint every N optimizer steps")
    return p


# --------------------------------------------------------------------------- checks
def check_flags(args) -> None:
    if args.lora_rank is None and (args.lora_alpha is not None or args.lora_targets):
        raise ValueError("--lora-alpha and --lora-targets need --lora-rank")
    if args.lora_rank is not None and args.task not in LORA_TASKS:
        raise ValueError(f"--lora-rank applies to {' and '.join(LORA_TASKS)}; the {args.task} recipe trains "
                         "without LoRA here (drop the LoRA flags)")
    if args.lora_rank is not None and args.lora_rank <= 0:
        raise ValueError(f"--lora-rank must be a positive whole number, got {args.lora_rank}")
    if args.scheme and args.task != "mlm":
        raise ValueError("--scheme is the masked-LM masking scheme; it applies to the mlm task only")
    if args.dropout is not None and (args.task not in ("classify", "ner") or not 0 <= args.dropout < 1):
        raise ValueError("--dropout applies to classify and ner, as a probability in [0, 1)")
    if args.frozen and args.task not in ("classify", "ner"):
        raise ValueError("--frozen applies to classify and ner")
    if args.frozen and args.lora_rank is not None:
        raise ValueError("choose --frozen or --lora-rank: LoRA already freezes every original weight")
    if bool(args.data) == bool(args.train_file):
        raise ValueError("give --data (a packaged dataset) or --train-file (your JSONL/CSV): exactly one of them, "
                         + ("not both" if args.data else "none was given"))
    if args.eval_file and not args.train_file:
        raise ValueError("--eval-file goes with --train-file")
    for name in ("epochs", "learning_rate", "batch_size", "max_length", "save_steps"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")


def run_config(args) -> dict:
    """The configuration that defines the run: the flags minus those that only say where and how to continue."""
    return {k: v for k, v in sorted(vars(args).items()) if k not in NOT_THE_RUN}


def last_complete_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint-N whose trainer_state.json exists. The Trainer writes that file last, so a save
    that was killed half-way is skipped and the one before it is used."""
    found = sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1])
                   if p.name.split("-")[-1].isdigit() else -1, reverse=True)
    return next((p for p in found if (p / "trainer_state.json").is_file()), None)


def prepare_output(args, config: dict) -> Path | None:
    """Refuse to mix runs in one folder; return the checkpoint to resume from (or None). Every process checks
    (so bad input stops them all with the same message); the caller then lets the main process `start_output`."""
    out = Path(args.output_dir)
    previous = out / RUN_FILE
    if args.resume:
        if not previous.is_file():
            raise ValueError(f"--resume: {out} holds no ftkit run to continue; start without --resume")
        old = json.loads(previous.read_text())
        changed = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
        if changed:
            raise ValueError(f"--resume: the run in {out} was started with other settings ({', '.join(changed)}); "
                             "resume with the same flags, or start a new --output-dir")
        checkpoint = last_complete_checkpoint(out / "checkpoints")
        if checkpoint is None:
            raise ValueError(f"--resume: no complete checkpoint in {out / 'checkpoints'} yet; start without --resume")
        return checkpoint
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        what = "a different ftkit run" if previous.is_file() else "files that are not an ftkit run"
        raise ValueError(f"--output-dir {out} already holds {what}; pass --overwrite to replace it, "
                         "--resume to continue it, or choose another folder")
    return None


def start_output(args, config: dict) -> None:
    """Main process only, after every process has checked: clear an --overwrite folder, record the run."""
    out = Path(args.output_dir)
    if args.overwrite and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / RUN_FILE, json.dumps(config, indent=1))


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- data
FLAG = {"train": "--train-file", "test": "--eval-file"}


def load_files(train_file: str, eval_file: str | None, seed: int):
    """The user's files as a DatasetDict ("train", "test"; without --eval-file, 10% of the training rows held out).
    Each file is read on its own (`read_file`), so one that cannot be read is named, with the line at fault."""
    from datasets import DatasetDict

    files = {"train": train_file, **({"test": eval_file} if eval_file else {})}
    kinds = set()
    for split, f in files.items():
        if not Path(f).is_file():
            raise ValueError(f"{FLAG[split]} {f!r} does not exist")
        suffix = Path(f).suffix.lower()
        if suffix not in (".jsonl", ".json", ".csv"):
            raise ValueError(f"{f!r}: use a .jsonl (one JSON object per line) or a .csv file")
        kinds.add("csv" if suffix == ".csv" else "json")
    if len(kinds) > 1:
        raise ValueError("--train-file and --eval-file must be the same format (both JSONL or both CSV)")
    kind = kinds.pop()
    ds = DatasetDict({split: read_file(f, FLAG[split], kind) for split, f in files.items()})
    if "test" not in ds:
        if ds["train"].num_rows < 2:
            raise ValueError(f"--train-file {train_file!r} has {ds['train'].num_rows} row: too few to hold 10% out for "
                             "evaluation; add rows or give an --eval-file")
        ds = ds["train"].train_test_split(test_size=0.1, seed=seed)
    return ds


def read_file(path: str, flag: str, kind: str):
    """One JSONL or CSV file as a Dataset. In a CSV file only an empty cell is missing ("NA" or "None" stay text). An
    empty file, a line that is not a JSON object (named by its number) or a file the reader rejects is a ValueError
    naming the flag and the file."""
    from datasets import load_dataset

    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{flag} {path!r} is not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8")
    what = "one JSON object per line" if kind == "json" else "a header line, then one row per line"
    if not text.strip():
        raise ValueError(f"{flag} {path!r} is empty: it needs at least one row ({what})")
    if kind == "json":
        check_json_lines(text, path, flag)
    elif len([line for line in text.splitlines() if line.strip()]) < 2:
        raise ValueError(f"{flag} {path!r} has a header line but no rows ({what})")
    try:
        # CSV: only an empty cell is missing; pandas' default markers would turn a text or label "NA", "None" or
        # "null" into a missing value
        options = {"keep_default_na": False, "na_values": [""]} if kind == "csv" else {}
        ds = load_dataset(kind, data_files={"train": path}, split="train", **options)
    except Exception as err:                    # datasets wraps the reader's error; show its own words, once
        cause = err
        while cause.__cause__ is not None or cause.__context__ is not None:
            cause = cause.__cause__ or cause.__context__
        raise ValueError(f"{flag} {path!r} could not be read as {'JSONL' if kind == 'json' else 'CSV'} ({what}): "
                         f"{str(cause).splitlines()[0] if str(cause) else type(cause).__name__}; check that every row "
                         "has the same columns with the same kind of values") from None
    if ds.num_rows == 0:
        raise ValueError(f"{flag} {path!r} has no rows ({what})")
    return ds


def check_json_lines(text: str, path: str, flag: str) -> None:
    """Each non-blank line is one JSON object (or the whole file is one JSON list of objects)."""
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None
    if isinstance(whole, list):
        bad = next((i for i, row in enumerate(whole) if not isinstance(row, dict)), None)
        if bad is not None:
            raise ValueError(f"{flag} {path!r}: item {bad} of the JSON list is a {type(whole[bad]).__name__}, not an "
                             "object with your columns")
        if not whole:
            raise ValueError(f"{flag} {path!r} is an empty JSON list: it needs at least one row")
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{flag} {path!r} line {number} is not valid JSON ({err.msg} at column {err.colno}): "
                             f"{line[:80]!r}; a JSONL file holds one complete JSON object per line") from None
        if not isinstance(row, dict):
            raise ValueError(f"{flag} {path!r} line {number} is a JSON {type(row).__name__}, not an object: each line "
                             'must be one object with your columns, e.g. {"text": "...", "label": "..."}')


def load_task_data(args):
    """A DatasetDict with the columns the task's ftkit function expects (renamed from yours)."""
    from . import data

    if args.data:
        spec = data._spec(args.data)
        if spec.kind != DATA_KIND[args.task]:
            fitting = sorted(n for n, s in data.DATASETS.items() if s.kind == DATA_KIND[args.task])
            raise ValueError(f"{args.data!r} is a {spec.kind} dataset; the {args.task} task needs "
                             f"{DATA_KIND[args.task]} data: one of {fitting}")
        ds = data.load(args.data)
        if args.task == "mlm" and "test" not in ds:
            ds = ds["train"].train_test_split(test_size=0.1, seed=args.seed)
        return ds
    ds = load_files(args.train_file, args.eval_file, args.seed)
    wanted = {"classify": {args.text_column: "text", args.label_column: "label"},
              "ner": {args.tokens_column: "tokens", args.tags_column: "tags"},
              "mlm": {args.text_column: "text"},
              "sft": {args.instruction_column: "instruction", args.response_column: "response"}}[args.task]
    for split in ds:
        have = ds[split].column_names
        missing = [c for c in wanted if c not in have]
        if missing:
            f = args.train_file if split == "train" or not args.eval_file else args.eval_file
            flag = FLAG[split] if args.eval_file else "--train-file"
            raise ValueError(f"{flag} {f!r} has no column {missing[0]!r} (columns: {have}); the {args.task} task "
                             f"reads columns {list(wanted)}: rename them in the file, or name yours with "
                             + ", ".join(f"--{t}-column NAME" for t in wanted.values()))
    # the task's columns only: another column in one file (not the other) must not change the run
    keep = list(wanted) + (["context"] if args.task == "sft" else [])
    for split in ds:
        ds[split] = ds[split].select_columns([c for c in keep if c in ds[split].column_names])
        if args.task == "sft" and "context" not in ds[split].column_names:
            ds[split] = ds[split].add_column("context", [""] * ds[split].num_rows)
    for mine, theirs in wanted.items():
        if mine != theirs:
            ds = ds.rename_column(mine, theirs)
    if args.task == "classify":                  # string labels: one mapping for every split (not per split)
        ds = data.encode_label_column(ds)
    return ds


# --------------------------------------------------------------------------- the recipes
def ner_labels(ds) -> list[str]:
    """The tagger's labels: O, then B-/I- for each entity type of the training split."""
    from . import ner

    return ner.label_list(sorted({t[2:] for tags in ds["train"]["tags"] for t in tags if t != "O"}))


def check_task_data(args, cfg, ds) -> None:
    """What would stop the run part-way, checked before anything is written: for ner, IOB2 in every split and every
    tag in the training split's tag set; for sft, a response token left after --max-length in the training rows and
    in the held-out rows."""
    from . import data, instruct, models, ner

    if args.task == "ner":
        ner.check_rows(ds)                      # lists of words and of tag names, one tag per word
        for split in ds:
            for i, tags in enumerate(ds[split]["tags"]):
                data.validate_iob2(tags, where=f"{split} row {i}: ")
        ner.check_tags(ds, {n: i for i, n in enumerate(ner_labels(ds))})
    if args.task == "sft":
        tok = models.load_tokenizer("causal", cfg)
        instruct.check_responses_fit(instruct.sft_dataset(ds["train"]), tok, cfg.max_length)
        instruct.tokenize_instructions(ds["test"], tok, cfg.max_length)


def run_profile(args, cfg):
    """The notebook profile, with the user's flags and the resolved model written into it."""
    from . import models

    profile = cfg.profile
    changes = {k: v for k, v in {"epochs": args.epochs, "learning_rate": args.learning_rate,
                                  "batch_size": args.batch_size, "max_length": args.max_length}.items()
               if v is not None}
    if args.max_steps is not None:
        changes["max_steps"] = args.max_steps
    elif args.epochs is not None:
        changes["max_steps"] = -1
    role = ROLE[args.task]
    resolved = models.resolve(role, cfg, args.model)      # an explicit model is had, or is a ValueError
    changes["models"] = {**profile.models, role: resolved}
    return replace(cfg, profile=profile.with_(**changes), seed=args.seed)


def train_task(args, cfg, ds, overrides: dict):
    """Run the task's ftkit function; returns (RunResult, tokenizer)."""
    from . import instruct, lora, metrics, models, ner, train, tuning

    # the model family's own dropout keys (BERT hidden_dropout_prob..., DistilBERT dropout...), read from its config
    dropout = {} if args.dropout is None else {"config_overrides": models.dropout_config(
        args.dropout, cfg.profile.models[ROLE[args.task]])}
    if args.task == "classify":
        encoded, tok = tuning.tokenize(ds, cfg)
        feature = ds["train"].features["label"]
        names = list(feature.names) if hasattr(feature, "names") else \
            [str(i) for i in range(max(ds["train"]["label"]) + 1)]
        if args.lora_rank is None:
            return tuning.fine_tune(cfg, encoded, tok, names, n_frozen=args.frozen, name="classify", **dropout,
                                    **overrides), tok
        model = models.load_classifier(names, cfg, **dropout.get("config_overrides", {}))
        targets = args.lora_targets.split(",") if args.lora_targets else models.lora_targets(model, "attention")
        model = lora.peft_lora(model, targets, r=args.lora_rank, alpha=args.lora_alpha or 2 * args.lora_rank,
                               task_type="SEQ_CLS")
        return train.fit(model, encoded["train"], encoded["test"], cfg, name="classify LoRA", tokenizer=tok,
                         compute_metrics=metrics.compute_classification, **overrides), tok
    if args.task == "ner":
        names = ner_labels(ds)              # checked in every split by check_task_data
        tok = models.load_tokenizer("encoder", cfg)
        encoded = ner.tokenize_and_align(ds, tok, {n: i for i, n in enumerate(names)}, max_length=cfg.max_length)
        result, _ = ner.train_tagger(cfg, encoded, tok, names, n_frozen=args.frozen, name="ner", **dropout,
                                     **overrides)
        return result, tok
    if args.task == "mlm":
        from . import mlm

        lr = {"learning_rate": args.learning_rate} if args.learning_rate else {}     # else session 03's 1e-4
        _, result = mlm.adapt(cfg, list(ds["train"]["text"]), scheme=args.scheme or "whole_word",
                              max_length=cfg.max_length, name="mlm", **lr, **overrides)
        return result, models.load_tokenizer("encoder", cfg)
    model, tok = models.load_causal(cfg)
    targets = args.lora_targets.split(",") if args.lora_targets else models.lora_targets(model, "all-linear")
    result = instruct.sft(model, tok, ds["train"], cfg, name="sft", lora_rank=args.lora_rank,
                          max_length=cfg.max_length, lora_alpha=args.lora_alpha,
                          lora_targets=targets if args.lora_rank is not None else None, **overrides)
    held_out = instruct.tokenize_instructions(ds["test"], tok, cfg.max_length)
    result.metrics["held-out loss"] = instruct.held_out_loss(result.model, held_out, tok)
    return result, tok


def save_outputs(out: Path, result, tokenizer, cfg) -> None:
    """Weights (or the adapter) and tokenizer as safetensors into OUT/model, then metrics.json; each written
    beside its final name and renamed, so an interrupted save never leaves a half-written model behind."""
    model_dir, tmp = out / "model", out / "model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    result.model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(model_dir, ignore_errors=True)
    os.replace(tmp, model_dir)
    write_atomic(out / "metrics.json", json.dumps({**result.to_record(), "profile": cfg.profile.name}, indent=1,
                                                  default=str))


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        return run(args)
    except ValueError as err:                   # bad input: one clear line, not a traceback
        print(f"error: {err}", file=sys.stderr)
        return 2


def run(args) -> int:
    import ftkit  # noqa: F401  (offline probe before transformers)
    from accelerate import PartialState

    from .env import setup

    check_flags(args)
    import torch

    # The distributed set-up that accelerate launch (or torchrun) provides, or one process. Without a GPU the
    # processes must be told they are CPU processes, or each one believes it runs alone.
    state = PartialState(cpu=not torch.cuda.is_available())
    cfg = setup(args.profile, seed=args.seed, verbose=state.is_main_process)
    cfg = run_profile(args, cfg)
    ds = load_task_data(args)
    if cfg.profile.name == "smoke":             # a quick check of the whole pipeline, as in the notebooks
        from .data import for_profile

        ds = for_profile(ds, cfg)
        if state.is_main_process:
            print(f"[ftkit] smoke profile: {len(ds['train'])} training and {len(ds['test'])} evaluation rows")
    check_task_data(args, cfg, ds)
    config = {**run_config(args), "resolved model": cfg.profile.models[ROLE[args.task]], "profile": cfg.profile.name}
    checkpoint = prepare_output(args, config)
    state.wait_for_everyone()                   # all have looked at the folder before the main process writes
    if state.is_main_process and checkpoint is None:
        start_output(args, config)
    state.wait_for_everyone()
    out = Path(args.output_dir)
    overrides = {"output_dir": str(out / "checkpoints"), "save_strategy": "steps", "save_steps": args.save_steps,
                 "save_total_limit": 2, "seed": args.seed, "resume_from_checkpoint": str(checkpoint) if checkpoint
                 else None}
    result, tok = train_task(args, cfg, ds, overrides)
    if state.is_main_process:
        save_outputs(out, result, tok, cfg)
        shown = {k: round(v, 4) for k, v in result.metrics.items() if isinstance(v, float)}
        print(f"{args.task}: {result.steps} steps in {result.seconds:.0f} s on {state.num_processes} process(es); "
              f"{shown}; wrote {out / 'model'} and {out / 'metrics.json'}")
    state.wait_for_everyone()
    return 0
