"""Small, seeded models for checks: built from a config in milliseconds, with no download and no file.

Checks run the learner's code on these instead of the course models, so they finish well under a second and never
depend on the notebook's state. Each call builds a fresh model (a learner's function may modify it) from a fixed
seed (the check's own random state is restored afterwards by the framework). Use several architectures where a
learner could assume one architecture's module names (BERT `query`, DistilBERT `q_lin`, Llama `q_proj`).
"""
from __future__ import annotations

ENCODERS = ("bert", "distilbert")


def tiny_classifier(architecture: str = "bert", num_labels: int = 2, layers: int = 2, seed: int = 0):
    """A sequence classifier (hidden size 16, vocabulary 64, at most 32 positions) of a real transformers
    architecture: "bert" (blocks `bert.encoder.layer.N`) or "distilbert" (`distilbert.transformer.layer.N`)."""
    import torch
    from transformers import (BertConfig, BertForSequenceClassification, DistilBertConfig,
                              DistilBertForSequenceClassification)

    if architecture not in ENCODERS:
        raise ValueError(f"tiny_classifier: architecture {architecture!r} is not one of {', '.join(ENCODERS)}")
    torch.manual_seed(seed)
    if architecture == "bert":
        return BertForSequenceClassification(BertConfig(
            vocab_size=64, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=32, num_labels=num_labels)).eval()
    return DistilBertForSequenceClassification(DistilBertConfig(
        vocab_size=64, dim=16, n_layers=layers, n_heads=2, hidden_dim=32, max_position_embeddings=32,
        num_labels=num_labels)).eval()


def tiny_causal_lm(layers: int = 2, seed: int = 0):
    """A Llama-architecture causal LM (SmolLM2's family: `model.layers.N.self_attn.q_proj`), hidden size 16,
    vocabulary 64, grouped-query attention with 2 heads and 1 key/value head."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=32, max_position_embeddings=64)).eval()
