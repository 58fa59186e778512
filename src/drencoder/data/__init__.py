"""Data: multiple-choice items and prompts, the offline tasks, fine-tuning examples, and
client partitioners.

* ``items`` — ``MCItem``, ``PromptFormat`` (MMLU, C-Eval, sentiment), stable hashing;
* ``mmlu`` — the packaged MMLU test split and the project's fixed exemplar / fine-tune /
  held-out split of it;
* ``ceval`` — C-Eval from a user directory in the official CSV layout;
* ``sentiment`` — the packaged Chinese review sentiment set, cleaned and split;
* ``examples`` — causal-LM training examples and a padding collate function;
* ``partition`` — iid, Dirichlet and by-subject client partitions.

``docs/data.md`` gives the formats, the split rules and the measured counts.
"""

from drencoder.data.ceval import CEvalData, load_ceval
from drencoder.data.examples import (
    IGNORE_INDEX,
    LossOn,
    answer_token_ids,
    build_example,
    build_examples,
    collate,
    encode_prompt,
    pad_token_id,
)
from drencoder.data.items import (
    CEVAL_FORMAT,
    FORMATS,
    LETTERS,
    MMLU_FORMAT,
    SENTIMENT_FORMAT,
    MCItem,
    PromptFormat,
    get_format,
    stable_fraction,
    take_per_subject,
)
from drencoder.data.mmlu import MMLUSplit, load_mmlu, mmlu_path, read_mmlu, split_mmlu
from drencoder.data.partition import (
    Partitioning,
    PartitionKey,
    dirichlet_partition,
    iid_partition,
    item_keys,
    key_skew,
    partition,
    subject_partition,
)
from drencoder.data.sentiment import SentimentSplit, load_sentiment, sentiment_dir

__all__ = [
    "CEVAL_FORMAT",
    "FORMATS",
    "IGNORE_INDEX",
    "LETTERS",
    "MMLU_FORMAT",
    "SENTIMENT_FORMAT",
    "CEvalData",
    "LossOn",
    "MCItem",
    "MMLUSplit",
    "PartitionKey",
    "Partitioning",
    "PromptFormat",
    "SentimentSplit",
    "answer_token_ids",
    "build_example",
    "build_examples",
    "collate",
    "dirichlet_partition",
    "encode_prompt",
    "get_format",
    "iid_partition",
    "item_keys",
    "key_skew",
    "load_ceval",
    "load_mmlu",
    "load_sentiment",
    "mmlu_path",
    "pad_token_id",
    "partition",
    "read_mmlu",
    "sentiment_dir",
    "split_mmlu",
    "stable_fraction",
    "subject_partition",
    "take_per_subject",
]
