"""The gpu profile (Colab T4) on this CPU machine, with stand-in models under the profile's exact Hub ids.

Nothing here needs a GPU or the Hub. At test time (seconds; nothing is committed as binaries) tiny models with the
real architectures and tokenizers are written into a temporary Hugging Face cache, in the layout the Hub's
downloader writes (`models--org--name/snapshots/<commit>/`, `refs/main`), so that `snapshot_download(...,
local_files_only=True)` finds them, and in the dtype their real configs declare:

* `distilbert-base-uncased`: DistilBERT (masked-LM checkpoint, float32) with the real uncased vocabulary (the
  packaged MiniLM's tokenizer is bert-base-uncased's);
* `sentence-transformers/all-MiniLM-L6-v2`: a tiny BERT sentence-transformers folder (Transformer, mean Pooling,
  Normalize), float32;
* `HuggingFaceTB/SmolLM2-135M-Instruct` (causal), `-1.7B-Instruct` (judge), `-360M-Instruct` (large_causal): Llama
  with SmolLM2's tokenizer and chat template, the real depth and head counts, bfloat16.

The gpu profile then runs with HF_HUB_OFFLINE=1 through every notebook's ftkit calls and the CLI, with tiny sizes
from a copy of the profile (`Profile.with_`; learners' profiles are untouched). The packaged fallback is made to fail,
so a model that does not resolve to its stand-in is an error, not a silent substitute.

What this cannot check: CUDA itself. Here `cfg.device` is "cpu", so fp16 autocast, the GPU memory levers in
`train.fit` and the cost table's GPU measurements do not run; their decisions are unit-tested with the real model
configurations on PyTorch's meta device (`test_every_gpu_profile_training_step_fits_a_t4`), and device placement is
checked with models on the meta device (`on_meta`).
"""
import json
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open

from ftkit import env, models

COMMIT = "0123456789abcdef0123456789abcdef01234567"
LLAMAS = {  # Hub id -> (blocks, attention heads, key/value heads) of the real model
    "HuggingFaceTB/SmolLM2-135M-Instruct": (30, 9, 3),
    "HuggingFaceTB/SmolLM2-360M-Instruct": (32, 15, 5),
    "HuggingFaceTB/SmolLM2-1.7B-Instruct": (24, 32, 32),
}
TINY = dict(train_size=16, eval_size=16, epochs=1, max_steps=2, batch_size=4, max_length=32)


# --------------------------------------------------------------------------- building the stand-ins
def snapshot(cache, repo_id):
    """The snapshot folder of `repo_id` in the Hugging Face cache layout, with refs/main pointing at it."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    folder = repo / "snapshots" / COMMIT
    folder.mkdir(parents=True)
    return folder


def build_distilbert(folder):
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertForMaskedLM

    tokenizer = AutoTokenizer.from_pretrained(models.packaged_minilm_path())      # bert-base-uncased's vocabulary
    config = DistilBertConfig(vocab_size=len(tokenizer), dim=32, hidden_dim=64, n_layers=6, n_heads=2,
                              architectures=["DistilBertForMaskedLM"])
    torch.manual_seed(0)
    model = DistilBertForMaskedLM(config)
    with torch.no_grad():       # a head that looks trained, not freshly initialised (LayerNorm 1, biases 0)
        for p in (model.vocab_layer_norm.weight, model.vocab_layer_norm.bias, model.vocab_projector.bias):
            p.add_(torch.randn_like(p))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def build_minilm_sentence_model(folder, scratch):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(models.packaged_minilm_path())
    torch.manual_seed(1)
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=48, num_hidden_layers=6, num_attention_heads=12,
                         intermediate_size=64)).save_pretrained(scratch)
    tokenizer.save_pretrained(scratch)
    body = Transformer(str(scratch), max_seq_length=256)
    SentenceTransformer(modules=[body, Pooling(body.get_embedding_dimension(), "mean"), Normalize()],
                        device="cpu").save(str(folder))


def build_smollm2(folder, blocks, heads, kv_heads):
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer_dir = models.prepare_causal(verbose=False)       # the packaged SmolLM2's tokenizer and chat template
    config = LlamaConfig(vocab_size=49152, hidden_size=4 * heads, intermediate_size=8 * heads,
                         num_hidden_layers=blocks, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=8192, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
                         pad_token_id=2, architectures=["LlamaForCausalLM"])
    torch.manual_seed(2)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(folder)      # as the Hub's SmolLM2 checkpoints
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(folder)
    GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=2).save_pretrained(folder)


def build_standins(cache, scratch) -> dict:
    """{Hub id: snapshot folder} for every model the gpu profile names."""
    folders = {repo_id: snapshot(cache, repo_id) for repo_id in
               ["distilbert-base-uncased", "sentence-transformers/all-MiniLM-L6-v2", *LLAMAS]}
    build_distilbert(folders["distilbert-base-uncased"])
    build_minilm_sentence_model(folders["sentence-transformers/all-MiniLM-L6-v2"], scratch)
    for repo_id, shape in LLAMAS.items():
        build_smollm2(folders[repo_id], *shape)
    return folders


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    """(cfg, {Hub id: folder}): the gpu profile with tiny sizes, the stand-ins in a temporary HF cache, offline."""
    import huggingface_hub.constants

    root = tmp_path_factory.mktemp("gpu-standins")
    folders = build_standins(root / "hub", root / "scratch")
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {"HF_HUB_CACHE": str(root / "hub"), "HF_HUB_OFFLINE": "1", "FTKIT_PROFILE": "gpu",
                            "FTKIT_CACHE": str(root / "ftkit-cache")}.items():
            mp.setenv(name, value)          # child processes (the CLI, the cost table) inherit these
        mp.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root / "hub"))   # read at import time

        def no_fallback(role):
            raise AssertionError(f"the {role} role fell back to the packaged model instead of its stand-in")

        mp.setattr(models, "packaged_path", no_fallback)
        cfg = env.setup(verbose=False)
        assert cfg.profile.name == "gpu"
        yield replace(cfg, profile=cfg.profile.with_(**TINY)), folders


# --------------------------------------------------------------------------- helpers
def dtypes(model) -> set:
    return {p.dtype for p in model.parameters()}


def safetensors_dtypes(folder) -> set:
    found = set()
    for file in folder.glob("*.safetensors"):
        with safe_open(str(file), "pt") as f:
            found |= {f.get_slice(k).get_dtype() for k in f.keys()}
    return found


class Reached(Exception):
    """A forward pass was reached with every input on the model's device."""


@contextmanager
def on_meta(model):
    """The model's weights on PyTorch's meta device (shapes, no data) and a guard on every module's forward and on
    `generate`: the first call whose tensors are all on the meta device raises Reached; a tensor on another device
    (a CPU tensor that was never moved to the model's device) fails the test, naming the module. Without a GPU this
    is the "model on another device" case: code that forgets to move its inputs fails here exactly as on a GPU."""
    model.to("meta")

    def check(module, args, kwargs):
        tensors = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)]
        elsewhere = sorted({str(t.device) for t in tensors if t.device.type != "meta"})
        if elsewhere:
            raise AssertionError(f"{type(module).__name__} got inputs on {elsewhere}; its weights are on meta")
        raise Reached

    handles = [m.register_forward_pre_hook(check, with_kwargs=True) for m in model.modules()]
    model.generate = lambda *args, **kwargs: check(model, args, kwargs)
    try:
        yield model
    finally:
        for h in handles:
            h.remove()
        del model.generate


# --------------------------------------------------------------------------- resolution and dtypes
def test_every_role_resolves_to_its_stand_in_never_to_the_packaged_model(standins):
    cfg, folders = standins
    assert env.PROFILES["gpu"].models["causal"] == "HuggingFaceTB/SmolLM2-135M-Instruct"     # an instruct model
    ids = {**env.PROFILES["gpu"].models, "large_causal": env.PROFILES["gpu"].extra["large_causal"]}
    assert set(ids.values()) == set(folders)
    for role, repo_id in ids.items():
        path = models.resolve("causal" if role == "large_causal" else role, cfg,
                              repo_id if role == "large_causal" else None)
        assert path == str(folders[repo_id]), role
        assert models.describe(path) == repo_id           # the table names the Hub model, not a cache path


def test_the_stand_ins_carry_the_dtype_of_their_real_checkpoints(standins):
    _, folders = standins
    for repo_id in LLAMAS:
        assert safetensors_dtypes(folders[repo_id]) == {"BF16"}
        assert json.loads((folders[repo_id] / "config.json").read_text())["dtype"] == "bfloat16"
        assert models.checkpoint_dtype(folders[repo_id]) == "bfloat16"
    assert models.checkpoint_dtype(folders["distilbert-base-uncased"]) == "float32"


def test_models_that_train_load_in_float32_from_a_bfloat16_checkpoint(standins):
    cfg, folders = standins
    from transformers import AutoModelForCausalLM

    raw = AutoModelForCausalLM.from_pretrained(folders["HuggingFaceTB/SmolLM2-135M-Instruct"])
    assert dtypes(raw) == {torch.bfloat16}           # transformers 5's default: the config's dtype
    model, tok = models.load_causal(cfg)
    assert dtypes(model) == {torch.float32} and tok.chat_template
    assert dtypes(models.load_causal(cfg, role="judge")[0]) == {torch.float32}     # a CPU: no bfloat16 units
    for load in (lambda: models.load_classifier(["a", "b"], cfg),
                 lambda: models.load_token_classifier(["O", "B-X"], cfg),
                 lambda: models.load_masked_lm(cfg), lambda: models.load_encoder(cfg),
                 lambda: models.load_sentence_model(cfg)):
        assert dtypes(load()) == {torch.float32}


# --------------------------------------------------------------------------- every notebook's ftkit calls
def test_session_00_asks_the_instruct_model_in_its_chat_template(standins):
    cfg, _ = standins
    causal, tok = models.load_causal(cfg)
    prompt = models.on_device(tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                                      add_generation_prompt=True, return_tensors="pt",
                                                      return_dict=True), causal)
    with torch.no_grad():
        out = causal.generate(**prompt, max_new_tokens=4, do_sample=False)
        next_logits = causal(**models.on_device(tok("The capital of France is", return_tensors="pt"), causal)).logits
    assert out.shape[1] > prompt["input_ids"].shape[1] and next_logits.shape[-1] == 49152
    emb = models.load_sentence_model(cfg).encode(["a film", "a movie", "a bank"], convert_to_tensor=True,
                                                 normalize_embeddings=True)
    assert emb.shape == (3, 48)
    from ftkit import data, train      # the compute table (tokens of the instruction data) and the memory estimate

    row = data.load("dolly")["train"][0]
    chat = [{"role": "user", "content": row["instruction"]}, {"role": "assistant", "content": row["response"]}]
    assert len(tok.apply_chat_template(chat, tokenize=True, return_dict=True)["input_ids"]) > 5
    estimate = train.memory_estimate(causal, batch=1, length=256)
    assert estimate["gradients and optimizer MB"] == pytest.approx(3 * estimate["weights MB"])   # float32 weights


def test_session_01_features_and_fine_tuning_on_distilbert(standins):
    from ftkit import data, train, tuning

    cfg, _ = standins
    rt = data.for_profile(data.load("rotten_tomatoes"), cfg)
    assert tuning.embed(rt["train"]["text"], cfg).shape == (16, 32)
    probe = models.load_classifier(["neg", "pos"], cfg)
    blocks_name, blocks = train.find_blocks(probe)
    assert (blocks_name, len(blocks)) == ("distilbert.transformer.layer", 6)
    assert {g["state"] for g in train.trainable_groups(probe)} == {"trainable"}
    encoded, tok = tuning.tokenize(rt, cfg)
    validation = tuning.validation_subset(encoded, 8)
    for n_frozen in (6, 4, 0):          # head only, last 2 blocks, all blocks: validated, best kept, with warm-up
        result = tuning.fine_tune(cfg, encoded, tok, ["neg", "pos"], n_frozen, validation=validation, eval_every=1,
                                  keep_best=True, warmup_steps=0.1)
        assert result.steps == 2 and 0 <= result.metrics["accuracy"] <= 1 and dtypes(result.model) == {torch.float32}
        assert [h["step"] for h in result.eval_history] == [1, 2] and result.best_step in (1, 2)
        assert [rate for _, rate in result.lr_history] == [0.0, cfg.learning_rate]
    from ftkit import results
    from ftkit.results import ResultsTable

    assert len(results.training_curves(result, per="epoch").data) == 4
    table = ResultsTable()
    panel = tuning.ablation_panel(cfg, encoded, tok, ["neg", "pos"], table, 6, validation=validation)
    assert panel.click(n_frozen=5, epochs=1.0).steps == 2 and "validation accuracy" in table.rows[0]


def test_session_02_setfit_on_the_sentence_model(standins):
    from ftkit import data, fewshot

    cfg, folders = standins
    rt = data.load("rotten_tomatoes")
    few, test = fewshot.sample_k(rt["train"], 2, seed=0), data.take(rt["test"], 8, stratify="label")
    result, setfit = fewshot.train_setfit(cfg, few, test, iterations=1)
    assert 0 <= result.metrics["accuracy"] <= 1 and dtypes(setfit.model_body) == {torch.float32}
    before = models.load_sentence_model(cfg)
    test_embeddings = fewshot.encode(before, test["text"])
    assert fewshot.frozen_baseline(cfg, few, test, before, test_embeddings=test_embeddings).metrics["accuracy"] >= 0
    # the gpu profile has no recorded curve: the notebook trains it live (fewshot.curve_sweep), the three methods
    # per point, full fine-tuning on the profile's encoder (DistilBERT's stand-in)
    assert fewshot.curve_settings(cfg)["encoder"] == "distilbert-base-uncased"
    rows = fewshot.curve_point(cfg, rt["train"], test, ["neg", "pos"], 2, 1, [0], before, test_embeddings)
    assert [r["method"] for r in rows] == list(fewshot.METHODS) and all(0 <= r["accuracy"] <= 1 for r in rows)


def test_session_03_random_head_adaptation_and_fill_mask_on_distilbert(standins):
    from ftkit import data, mlm
    from ftkit.results import ResultsTable

    cfg, _ = standins
    tok = models.load_tokenizer("encoder", cfg)
    general, random_head = models.load_masked_lm(cfg), models.load_masked_lm(cfg, warmed_head=False)
    pretrained, fresh = dict(general.named_parameters()), dict(random_head.named_parameters())
    for name in ("vocab_transform.weight", "vocab_layer_norm.weight", "vocab_layer_norm.bias", "vocab_projector.bias"):
        assert not torch.equal(pretrained[name], fresh[name]), f"{name} kept DistilBERT's pretrained head"
    assert torch.equal(fresh["distilbert.embeddings.word_embeddings.weight"],
                       pretrained["distilbert.embeddings.word_embeddings.weight"])
    assert random_head.vocab_projector.weight is random_head.distilbert.embeddings.word_embeddings.weight   # tied
    texts = data.general_corpus("test")[:6]
    sets = {"general token": mlm.eval_set(tok, texts, "token"), "general word": mlm.eval_set(tok, texts, "word")}
    assert mlm.masked_accuracy(random_head, sets["general token"])["hidden pieces"] > 0
    assert mlm.masking_cost(tok, texts, random_head, batch_size=2, max_length=32, batches=1)[0]["step ms"] > 0
    probes = {"general keep": mlm.shown_instead(sets["general token"], tok, "keep")}
    row = mlm.evaluate(general, tok, sets, {"general": texts[:2]}, probes)
    assert row["general pseudo-ppl"] > 1 and 0 <= row["general keep top1"] <= 1
    assert len(mlm.predictions(general, sets["general word"])) == len(texts)
    med_train, med_heldout = mlm.medical_corpus()
    adapted, result = mlm.adapt(cfg, med_train[:16], "whole_word", 0.15, epochs=1.0, max_length=32)
    assert result.steps == 2 and dtypes(adapted) == {torch.float32}
    _, bert_rule = mlm.adapt(cfg, med_train[:16], "token", 0.15, max_length=32, mask_token_only=False, max_steps=1)
    assert bert_rule.extra["replacement"] == "80/10/10"
    evaluation = {"sets": sets, "probes": probes, "ppl": {"general": texts[:2]}}
    assert mlm.run_row(adapted, tok, evaluation, result, model="adapted")["steps"] == 2
    assert mlm.fill_mask(adapted, tok, "Insulin is made in the [MASK].")[0]
    down = {**mlm.downstream_settings(cfg), "scarce": 1, "test": 8, "epochs scarce": None}   # gpu's, made small
    assert down["encoder"] == "distilbert-base-uncased" and down["seeds"] == [0, 1, 2, 3, 4]
    qtype, names, test_q = mlm.downstream_data(down)
    row = mlm.downstream_run(cfg, qtype, test_q, names, "scarce", 0, "adapted", mlm.encoder_state(adapted), down)
    assert row["train examples"] == len(names) and 0 <= row["accuracy"] <= 1, row
    table = ResultsTable()
    panel_sets = {"medical token": mlm.eval_set(tok, med_heldout[:4], "token"), "general token": sets["general token"]}
    mlm.adaptation_panel(cfg, med_train[:8], panel_sets, table, 1e-4, 32).click(
        scheme="token", probability=0.3, epochs=1.0)
    assert len(table) == 1
    assert mlm.fill_mask_panel({"general": general, "adapted": adapted}, tok).click(
        sentence="Hypothyroidism is treated with thyroid [MASK] replacement.").shape == (5, 2)


def test_session_04_ner_on_distilbert(standins):
    from ftkit import data, metrics, ner, train
    from ftkit.results import ResultsTable

    cfg, _ = standins
    types = list(data.DATASETS["wikigold"].entity_types)
    names = ner.label_list(types)
    ds = data.for_profile(data.load("wikigold"), cfg, stratify=None)
    tok = models.load_tokenizer("encoder", cfg)
    encoded = ner.tokenize_and_align(ds, tok, {n: i for i, n in enumerate(names)}, max_length=32)
    result, tagger = ner.train_tagger(cfg, encoded, tok, names, n_frozen=0, validate=True)
    assert result.steps == 2 and dtypes(tagger) == {torch.float32}
    assert result.eval_history and "overall_f1" in result.eval_history[-1]         # F1 by epoch, on validation
    predicted = ner.predict_tags(tagger, tok, ds["test"]["tokens"][:2], max_length=32)
    assert len(predicted) == 2
    seqeval = metrics.load("seqeval")
    for mode in ("strict", None):
        assert 0 <= seqeval.compute(predictions=predicted, references=ds["test"]["tags"][:2], mode=mode)["overall_f1"] <= 1
    assert ner.tagger_panel(tagger, tok, types).click(sentence="Ada Lovelace moved to London .")
    table = ResultsTable()
    depth = len(train.find_blocks(tagger)[1])
    ner.training_panel(cfg, encoded, tok, names, table, depth, learning_rate=5e-5, epochs=1.0).click(
        n_frozen=4, epochs=1.0)
    assert len(table) == 1


def test_session_05_sft_full_and_lora_the_judge_and_forgetting(standins, tmp_path):
    from trl import SFTConfig, SFTTrainer

    from ftkit import data, instruct, results, train

    cfg, _ = standins
    model, tok = models.load_causal(cfg)
    dolly = data.load("dolly")
    short = dolly["train"].filter(lambda r: len(instruct.label_example(r, tok)["input_ids"]) <= 64)
    rows, val_rows = instruct.split_validation(instruct.fitting(short, instruct.token_lengths(short, tok), 64), 4, 2)
    for template in instruct.TEMPLATES:
        assert instruct.render(dolly["test"][1], tok, template)
    example = instruct.label_example(rows[0], tok)
    batch = models.on_device({k: torch.tensor([v]) for k, v in example.items()}, model)
    with torch.no_grad():
        out = model(**batch)
    assert abs(out.loss.item() - instruct.hand_loss(out.logits, batch["labels"]).item()) < 1e-4
    assert len(instruct.teacher_forced(out.logits, batch["labels"], tok)) == sum(l != -100 for l in example["labels"][1:])
    trainer = SFTTrainer(model=model, processing_class=tok, train_dataset=instruct.sft_dataset(rows.select([0])),
                         args=train.training_args(cfg, args_class=SFTConfig, max_length=64, completion_only_loss=True))
    assert trainer.data_collator([trainer.train_dataset[0]])["labels"][0].tolist() == example["labels"]
    holdout = instruct.tokenize_instructions(dolly["test"].filter(
        lambda r: len(instruct.label_example(r, tok)["input_ids"]) <= 64).select(range(2)), tok, 64)
    base_losses = instruct.response_losses(model, holdout, tok)
    base_loss = instruct.held_out_loss(model, holdout, tok, losses=base_losses)
    assert instruct.example_loss(base_losses) > 0
    probe = list(instruct.sentiment_instructions(data.take(data.load("rotten_tomatoes")["validation"], 2,
                                                           stratify="label")))
    accuracy = instruct.sentiment_accuracy(model, tok, probe)["task accuracy"]
    assert 0 <= accuracy <= 1
    assert 0 <= instruct.general_accuracy(model, tok, questions=instruct.GENERAL_QUESTIONS[:2])["general QA"] <= 1
    steps = dict(max_length=64, steps=2, batch=2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    full = instruct.fine_tune(models.load_causal(cfg)[0], tok, rows, cfg, method="full", lr=1e-3, **steps)
    assert dtypes(full.model) == {torch.float32} and full.trainable_pct == 100
    lora = instruct.dolly_lora(model, tok, rows, val_rows, cfg, lr=1e-3, **steps)     # the best checkpoint kept
    # Only the adapters train: every trainable tensor is a LoRA matrix of rank RANK (the stand-in is tiny, so
    # their share of all weights says nothing about SmolLM2's).
    trainable = {n: p for n, p in lora.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert all(instruct.RANK in p.shape for p in trainable.values())
    assert lora.trainable_params == sum(p.numel() for p in trainable.values()) < lora.total_params
    assert lora.eval_history and lora.lr_history and results.training_curves(lora).data
    assert lora.best_step is not None and instruct.best_validation_loss(lora) == min(h["loss"] for h in lora.eval_history)
    assert instruct.held_out_loss(lora.model, holdout, tok) > 0
    assert all(p.dtype == torch.float32 for p in lora.model.parameters() if p.requires_grad)
    judge, judge_tok = models.load_causal(cfg, role="judge")
    answers = instruct.generate(lora.model, tok, list(rows)[:2], max_new_tokens=4, no_repeat_ngram_size=3)
    scored = instruct.score_answers("LoRA", answers, list(rows)[:2], models.load_sentence_model(cfg),
                                    lambda: instruct.as_base(judge), judge_tok)
    assert len(scored) == 2 and scored["cosine"].between(-1, 1).all()
    assert instruct.score_answers("LoRA", answers, list(rows)[:2])["cosine"].isna().all()     # no sentence model
    pairs = instruct.judge_pairs(judge, judge_tok, [r["instruction"] for r in rows][:2],
                                 [r["response"] for r in rows][:2])
    assert instruct.judge_reliability(pairs)["pairs"] == 8
    adapter = tmp_path / "adapter"
    lora.model.save_pretrained(adapter)
    base = lora.model.unload()
    assert all(torch.equal(p, before[n]) for n, p in base.named_parameters())      # LoRA left the base untouched
    with instruct.with_adapter(base, adapter) as tuned:
        assert instruct.generate(tuned, tok, list(rows)[:1], max_new_tokens=2)
    rt = data.load("rotten_tomatoes")
    task = instruct.narrow_task(instruct.sentiment_instructions(data.take(rt["train"], 4, stratify="label")), probe,
                                probe, holdout, list(rows)[:1], instruct.GENERAL_QUESTIONS[:2], 2)
    row, trajectory, _ = instruct.narrow_run(base, tok, cfg, task, "LoRA", 1, "narrow",
                                             {"validation accuracy": accuracy, "dolly loss": base_loss})
    assert list(trajectory["epoch"]) == [0, 1] and 0 <= row["task accuracy"] <= 1
    assert not any("lora" in n for n, _ in base.named_modules())       # narrow_run took its adapters out again
    assert base_loss > 0


def test_the_recorded_sweeps_of_01_04_and_05_run_live_on_the_gpu_profiles_models(standins, monkeypatch):
    """No recording ships for the gpu profile, so sessions 01, 04 and 05 train or compute these sweeps live there."""
    from ftkit import instruct, ner, results, tuning

    cfg, _ = standins
    rows = results.sweep_rows("tuning_freezing", cfg)
    assert [r["setup"] for r in rows] == ["head only", "last 2", "full"] and rows.provenance["live"]
    runs = tuning.freezing_runs(cfg, *tuning_inputs(cfg), 6, tuning.WARMUP, rows)    # nothing trained twice
    assert {r.extra["run"] for r in runs.values()} == {"trained now"} and runs["full"].best_step is not None
    frozen = ner.frozen_sweep(cfg)
    assert len(frozen) == 1 and frozen[0]["run"]["trainable_params"] < frozen[0]["run"]["total_params"]
    small = {**instruct.SIZES["gpu"], "loss pairs": 3, "validation pairs": 2, "answers": 2, "new tokens": 4,
             "task validation": 2, "general questions": 2, "train pairs": 4}
    monkeypatch.setitem(instruct.SIZES, "gpu", small)
    base = instruct.recorded_base_side(instruct.base_side(cfg))
    assert len(base.losses) == 3 and len(base.answers) == 2 and set(base.sentiment) == set(instruct.TEMPLATES)
    assert all(len(a) == 2 for a in base.general.values())
    assert [len(c["keys"]) for c in base.judge] == [2, 2 * 4 * 2]   # scores of 2 answers; 2 references x 4 x 2 orders


def tuning_inputs(cfg):
    from ftkit import data, tuning

    rt = data.for_profile(data.load("rotten_tomatoes"), cfg)
    encoded, tok = tuning.tokenize(rt, cfg)
    return encoded, tok, rt["train"].features["label"].names, tuning.validation_subset(encoded, tuning.VALIDATION_SENTENCES)


def test_session_06_lora_on_distilbert_and_smollm2_and_the_merge_check(standins, tmp_path):
    from peft import PeftModel

    from ftkit import data, instruct, lora, results, train

    cfg, _ = standins
    causal, tok = models.load_causal(cfg)
    errors = lora.low_rank_errors(causal.get_submodule("model.layers.0.self_attn.q_proj").weight,
                                  [1, 2, 4, 8, 16, 32, 64, 128, 256, 576])
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-3
    four_ways = results.sweep_rows("lora_classifiers", cfg)     # no gpu recording: the four ways trained now
    assert [row["setup"] for row in four_ways] == list(lora.CLASSIFIER_WAYS) and four_ways.provenance["live"]
    assert all(0 <= row["accuracy"] <= 1 and row["checkpoint KB"] > 0 for row in four_ways)
    encoded, enc_tok, names = lora.classifier_data(cfg)
    classifier = models.load_classifier(names, cfg)
    assert models.lora_targets(classifier, "attention") == ["q_lin", "v_lin"]
    result = lora.train_classifier(cfg, "LoRA r=8 (peft)", encoded, enc_tok, names)
    assert 0 < result.trainable_pct < 50 and dtypes(result.model) == {torch.float32}
    assert len(lora.add_adapters(models.load_classifier(["neg", "pos"], cfg), bottleneck=8)) == 6
    dolly_enc = instruct.tokenize_instructions(data.load("dolly")["train"].select(range(8)), tok, 48)
    assert train.memory_estimate(causal, 2, 48)["total MB"] > train.memory_estimate(causal, 2, 48, trainable=1000)[
        "total MB"]
    train_ds, held, held_short = lora.causal_data(cfg, tok)               # the notebook's section 5 runs
    assert len(held) == lora.causal_sizes(cfg)["held out"] and held_short[0] == held[0]
    short = lora.train_causal(cfg, train_ds.select(range(4)), held_short.select(range(2)), tok, 4, "attention",
                              "rsLoRA: alpha / sqrt(r)", steps=1, learning_rate=5e-2)
    assert short.extra["scale"] == lora.lora_scale(*lora.alpha_for("rsLoRA: alpha / sqrt(r)", 4)[:1], 4, True)
    assert short.extra[lora.UPDATE] == lora.update_norm(short.model, "model.layers.0.self_attn.q_proj") > 0
    assert short.metrics["held-out loss"] > 0 and dtypes(short.model) == {torch.float32}
    targets = models.lora_targets(causal, "attention+MLP")
    assert targets == ["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"]
    tuned = lora.peft_lora(causal, targets, r=8, alpha=16, task_type="CAUSAL_LM")
    train.fit(tuned, dolly_enc, None, cfg, name="LoRA r=8", data_collator=instruct.causal_collator(tok),
              per_device_train_batch_size=2, learning_rate=5e-2)
    adapter = tmp_path / "lora"
    tuned.save_pretrained(adapter)
    reloaded = PeftModel.from_pretrained(tuned.unload(), adapter).eval()
    lora_b = [p for n, p in reloaded.named_parameters() if "lora_B" in n]
    assert lora_b and max(p.abs().max().item() for p in lora_b) > 1e-3     # trained: a merge that changes something
    probe = models.on_device(tok(instruct.prompt(data.load("dolly")["test"][0]), return_tensors="pt"), reloaded)
    with torch.no_grad():
        adapter_logits = reloaded(**probe).logits
        merged_logits = reloaded.merge_and_unload()(**probe).logits
    assert (adapter_logits - merged_logits).abs().max().item() < 1e-3


def test_session_07_prompting_rag_lora_and_the_cost_table(standins):
    from ftkit import choose, data, instruct, tuning

    cfg, _ = standins
    model, tok = models.load_causal(cfg)
    rt = data.load("rotten_tomatoes")
    test_rows, pool = list(data.take(rt["test"], 2, stratify="label")), list(data.take(rt["train"], 8, seed=1))
    assert choose.context_length(model) == 8192
    zero = choose.kshot_eval(model, tok, test_rows, pool, 0, answer_prefix=choose.ANSWER_PREFIX)
    assert choose.kshot_eval(model, tok, test_rows, pool, 2, seed=0)["prompt tokens"] > zero["prompt tokens"]
    tuned = instruct.sft(model, tok, instruct.sentiment_instructions(data.take(rt["train"], 4, stratify="label")), cfg,
                         name="LoRA", lora_rank=4, max_length=128, per_device_train_batch_size=2)
    assert 0 <= choose.kshot_eval(tuned.model, tok, test_rows, pool, 0)["accuracy"] <= 1
    model = tuned.model.unload()
    features = tuning.embed([r["text"] for r in pool], cfg)
    assert features.shape == (8, 32)                      # the gpu profile's encoder: DistilBERT, not MiniLM
    qa = data.load("medquad_qa")
    qa_test = list(data.take(qa["test"], 2, seed=0))
    index = choose.AnswerIndex([r["answer"] for r in qa_test] + list(data.take(qa["train"], 6)["answer"]),
                               models.load_sentence_model(cfg))
    assert choose.recall_at_k(index, [r["question"] for r in qa_test], [r["answer"] for r in qa_test], ks=(1, 3))
    closed, rag = choose.medqa_prompts(index, qa_test, 2)
    assert closed[0] == {"instruction": qa_test[0]["question"]} and "Passage 2:" in rag[0]["context"]
    small = {**choose.medqa_settings(cfg.profile), "test questions": 2, "training pairs": 4, "max steps": 1,
             "answers per knowledge set": 1, "max length": 64, "new tokens": 4, "batch": 2,
             "index": "the test answers + 60 training answers"}
    assert small["model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    medqa = choose.medqa_sweep(cfg, small)          # what the gpu profile runs live (it has no recording)
    answers = choose.medqa_answers(medqa)
    assert list(answers) == list(choose.MEDQA_SETUPS) and all(len(a) == 2 for a in answers.values())
    assert len(choose.qa_scores("RAG", answers["RAG"], qa_test, index.model)) == 2
    before, after = choose.medqa_losses(medqa, "before"), choose.medqa_losses(medqa, "after")   # the knowledge test
    assert list(before) == list(after) and len(after) == 3, after
    assert all(len(v) == 1 and v[0] > 0 for v in [*before.values(), *after.values()]), (before, after)
    trained = [r for r in medqa if r["part"] == "training"]
    assert len(trained) == 1 and trained[0]["pairs"] == 4 and trained[0]["steps"] == 1, trained
    settings = choose.kshot_settings(cfg.profile)                     # the recorded sweep's rows for this profile
    assert settings["model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    sweep_test, sweep_pool = choose.kshot_rows({**settings, "test reviews": 2, "pool": 4})
    assert len(sweep_test) == 2 and len(sweep_pool) == 4
    uncached = choose.kshot_eval(model, tok, test_rows, pool, 2, seed=0, cache_prefix=False)
    cached = choose.kshot_eval(model, tok, test_rows, pool, 2, seed=0)   # the shared prompt start computed once
    assert cached["prompt tokens"] == uncached["prompt tokens"]
    assert abs(cached.scores - uncached.scores).max() < 1e-3, "reusing the cached prompt start changed the scores"
    assert choose.generation_speed(model, tok, new_tokens=4)["tokens/s"] > 0
    large = cfg.profile.extra["large_causal"]
    big, big_tok = models.load_causal(cfg, large)
    assert big.config.num_hidden_layers == 32 and dtypes(big) == {torch.float32}
    assert 0 <= choose.kshot_eval(big, big_tok, test_rows, pool, 0)["accuracy"] <= 1
    for role, model_id, stored in [("encoder", "distilbert-base-uncased", "float32"),
                                   ("causal", "HuggingFaceTB/SmolLM2-135M-Instruct", "bfloat16")]:
        row = choose._measure_costs(role, "full", None, "gpu", steps=1, batch=2, length=16)
        assert row["model"] == model_id and row["checkpoint dtype"] == stored, row
        assert row["memory measured"] == "process RAM (RSS)" and row["fine-tune full MB"] >= 0
        assert row["estimate: fine-tune full MB"] > 0 and "float32 weights" in row["setting"]


# --------------------------------------------------------------------------- the command line
TINY_RUN = ["--profile", "gpu", "--max-steps", "2", "--batch-size", "4", "--max-length", "32"]


@pytest.fixture()
def instructions(tmp_path):
    """A user's instruction file (JSONL), 8 short pairs: the sft recipe on your own data."""
    rows = [{"instruction": f"Name colour number {i}.", "response": f"Colour {i} is blue."} for i in range(8)]
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("task, extra, saved", [
    ("ner", ["--data", "wikigold", "--dropout", "0.2", "--frozen", "4"], "model.safetensors"),
    ("mlm", ["--data", "medquad_corpus"], "model.safetensors"),
    ("sft", ["--lora-rank", "4", "--max-length", "64"], "adapter_model.safetensors"),
])
def test_the_cli_trains_every_task_on_the_gpu_profiles_models(standins, tmp_path, capsys, instructions, task, extra,
                                                               saved):
    from ftkit import recipes

    _, folders = standins
    out = tmp_path / task
    files = ["--train-file", str(instructions), "--eval-file", str(instructions)] if task == "sft" else []
    code = recipes.main([task, *TINY_RUN, *extra, *files, "--output-dir", str(out)])
    assert code == 0, capsys.readouterr().err[-3000:]
    repo_id = env.PROFILES["gpu"].models["causal" if task == "sft" else "encoder"]
    assert json.loads((out / "run.json").read_text())["resolved model"] == str(folders[repo_id])
    assert safetensors_dtypes(out / "model") == {"F32"}      # trained weights (or adapter) are float32
    assert saved in {p.name for p in (out / "model").iterdir()}
    if task == "ner":        # DistilBERT's own dropout keys, not BERT's hidden_dropout_prob
        config = json.loads((out / "model" / "config.json").read_text())
        assert [config[k] for k in ("dropout", "attention_dropout", "seq_classif_dropout")] == [0.2, 0.2, 0.2]
        assert "hidden_dropout_prob" not in config
    if task == "sft":       # every linear layer of SmolLM2's blocks, named for its architecture
        adapter = json.loads((out / "model" / "adapter_config.json").read_text())
        assert sorted(adapter["target_modules"]) == [f"mlp.{n}_proj" for n in ("down", "gate", "up")] + \
            [f"self_attn.{n}_proj" for n in "koqv"]


def test_the_cli_command_distilbert_without_dropout_with_lora(standins, tmp_path):
    """The issue's command line, as a learner types it, in a fresh process (on a small file of their own): it died
    with a TypeError (BERT's hidden_dropout_prob) and then on BERT's LoRA target names."""
    out, mine = tmp_path / "lora", tmp_path / "reviews.jsonl"
    mine.write_text("".join(json.dumps({"text": f"review {i}", "label": "good" if i % 2 else "bad"}) + "\n"
                            for i in range(16)))
    done = subprocess.run([sys.executable, "-m", "ftkit", "train", "classify", "--model", "distilbert-base-uncased",
                           "--dropout", "0", "--lora-rank", "8", "--train-file", str(mine), *TINY_RUN,
                           "--output-dir", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    adapter = json.loads((out / "model" / "adapter_config.json").read_text())
    assert sorted(adapter["target_modules"]) == ["q_lin", "v_lin"]
    assert {"pre_classifier", "classifier"} <= set(adapter["modules_to_save"])   # DistilBERT's new head trains too


# --------------------------------------------------------------------------- a T4's 15 GB
def real_model(name, head="causal"):
    """The real configuration of a gpu-profile model, on the meta device (shapes only, no memory)."""
    from transformers import (AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSequenceClassification,
                              BertConfig, DistilBertConfig, LlamaConfig)

    smollm2 = dict(vocab_size=49152, tie_word_embeddings=True, max_position_embeddings=8192)
    config = {"SmolLM2-135M": LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                          num_attention_heads=9, num_key_value_heads=3, **smollm2),
              "SmolLM2-360M": LlamaConfig(hidden_size=960, intermediate_size=2560, num_hidden_layers=32,
                                          num_attention_heads=15, num_key_value_heads=5, **smollm2),
              "SmolLM2-1.7B": LlamaConfig(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
                                          num_attention_heads=32, num_key_value_heads=32, **smollm2),
              "DistilBERT": DistilBertConfig(),
              "MiniLM": BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                   intermediate_size=1536)}[name]
    auto = {"causal": AutoModelForCausalLM, "masked": AutoModelForMaskedLM,
            "classify": AutoModelForSequenceClassification}
    with torch.device("meta"):
        return auto[head].from_config(config, dtype=torch.float32)


def lora_parameters(model, r=16) -> int:
    """LoRA's trainable parameters at rank r on every Linear of the blocks (what instruct.sft trains)."""
    from ftkit.train import find_blocks

    return sum(r * (m.in_features + m.out_features) for block in find_blocks(model)[1] for m in block.modules()
               if isinstance(m, torch.nn.Linear))


T4_MB, CUDA_CONTEXT_MB = 15 * 1024, 500        # what Colab's T4 shows, and what each process's CUDA context takes
# Every training step the notebooks take in the gpu profile (their gpu sizes), with the models the kernel holds on
# the GPU meanwhile (float32; the judge too: a T4 has no bfloat16). `fit` goes through train.memory_levers; SetFit
# and the cost table's measuring process do not, so theirs must fit as asked.
GPU_STEPS = [  # (where, model, head, method, batch, tokens, resident models, processes, through fit)
    ("01 fine-tuning", "DistilBERT", "classify", "full", 32, 128, [], 1, True),
    ("02 SetFit pairs", "MiniLM", "classify", "full", 64, 128, ["MiniLM"], 1, False),
    ("03 adaptation", "DistilBERT", "masked", "full", 32, 256, ["DistilBERT", "DistilBERT"], 1, True),
    ("03 downstream", "DistilBERT", "classify", "full", 32, 128, ["DistilBERT", "DistilBERT"], 1, True),
    ("04 tagger", "DistilBERT", "classify", "full", 32, 128, [], 1, True),
    ("05 full fine-tuning", "SmolLM2-135M", "causal", "full", 16, 512, ["SmolLM2-135M"], 1, True),
    ("05 LoRA", "SmolLM2-135M", "causal", "LoRA", 16, 512, [], 1, True),
    ("05 panel, full, judge loaded", "SmolLM2-135M", "causal", "full", 16, 512,
     ["SmolLM2-135M", "SmolLM2-1.7B", "MiniLM"], 1, True),
    ("05 panel, LoRA, judge loaded", "SmolLM2-135M", "causal", "LoRA", 16, 512, ["SmolLM2-1.7B", "MiniLM"], 1, True),
    ("06 classifiers", "DistilBERT", "classify", "full", 32, 128, ["SmolLM2-135M"], 1, True),
    ("06 LoRA on SmolLM2", "SmolLM2-135M", "causal", "LoRA", 16, 512, [], 1, True),
    ("06 full fine-tuning of SmolLM2", "SmolLM2-135M", "causal", "full", 16, 512, ["SmolLM2-135M"], 1, True),
    ("07 LoRA sentiment", "SmolLM2-135M", "causal", "LoRA", 16, 256, ["MiniLM"], 1, True),
    ("07 LoRA medical QA", "SmolLM2-135M", "causal", "LoRA", 16, 512, ["MiniLM"], 1, True),
    ("07 cost table, 360M full", "SmolLM2-360M", "causal", "full", 4, 128, ["SmolLM2-135M", "MiniLM"], 2, False),
    ("07 cost table, encoder full", "DistilBERT", "classify", "full", 4, 128, ["SmolLM2-135M", "MiniLM"], 2, False),
]


@pytest.mark.parametrize("step", GPU_STEPS, ids=[s[0] for s in GPU_STEPS])
def test_every_gpu_profile_training_step_fits_a_t4(step):
    from ftkit import train

    where, name, head, method, batch, tokens, resident, processes, through_fit = step
    model = real_model(name, head)
    held = sum(train.count_params(real_model(r, "causal" if r.startswith("SmolLM2") else "classify"))[1] * 4
               for r in resident) / 2**20
    free = T4_MB - processes * CUDA_CONTEXT_MB - held
    trainable = lora_parameters(model) if method == "LoRA" else None
    levers, est = train.memory_levers(model, batch, tokens, 0.9 * free, mixed_precision=True, trainable=trainable)
    assert est["total MB"] <= 0.9 * free
    if not through_fit:
        assert levers == {}, f"{where} does not go through train.fit, so it must fit as asked: {est}"
    if where == "06 full fine-tuning of SmolLM2":        # the case: as asked it cannot fit, and it is split
        assert train.memory_estimate(model, batch, tokens, mixed_precision=True)["total MB"] > T4_MB
        assert levers["per_device_train_batch_size"] * levers["gradient_accumulation_steps"] == batch


# --------------------------------------------------------------------------- devices
@pytest.fixture()
def distilbert_mlm(standins):
    cfg, _ = standins
    return models.load_masked_lm(cfg), models.load_tokenizer("encoder", cfg)


@pytest.fixture()
def smollm2(standins):
    cfg, _ = standins
    return models.load_causal(cfg)


def test_session_03s_helpers_move_their_inputs_to_the_models_device(distilbert_mlm):
    from ftkit import data, mlm

    model, tok = distilbert_mlm
    texts = data.general_corpus("test")[:2]
    examples = mlm.eval_set(tok, texts, "token")
    for call in (lambda: mlm.masked_accuracy(model, examples), lambda: mlm.pseudo_perplexity(model, tok, texts),
                 lambda: mlm.predictions(model, examples),
                 lambda: mlm.fill_mask(model, tok, "Insulin is made in the [MASK]."),
                 lambda: mlm.masking_cost(tok, texts, model, batch_size=2, max_length=16, batches=1)):
        with on_meta(model), pytest.raises(Reached):
            call()


def test_session_05_and_07s_helpers_move_their_inputs_to_the_models_device(smollm2):
    from datasets import Dataset

    from ftkit import choose, instruct

    model, tok = smollm2
    rows = [{"instruction": "Name a colour.", "context": "", "response": "Blue."}]
    holdout = instruct.tokenize_instructions(Dataset.from_list(rows), tok, 32)
    for call in (lambda: instruct.held_out_loss(model, holdout, tok), lambda: instruct.generate(model, tok, rows),
                 lambda: choose.label_word_scores(model, tok, [instruct.prompt(rows[0])]),
                 lambda: choose.generation_speed(model, tok, new_tokens=2)):
        with on_meta(model), pytest.raises(Reached):
            call()


def test_the_guard_catches_a_cpu_tensor_fed_to_a_model_elsewhere(smollm2):
    """The check itself can fail: a forward pass with inputs left on the CPU, as the notebooks' hand-built inputs
    were, is caught with the model on the meta device, as it would fail on a GPU."""
    model, tok = smollm2
    with on_meta(model), pytest.raises(AssertionError, match=r"got inputs on \['cpu'\]; its weights are on meta"):
        model(**tok("The capital of France is", return_tensors="pt"))
