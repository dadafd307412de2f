"""Run by LLaMA-Factory's own Python (.venv-llamafactory): the token ids and labels its data
pipeline makes of our export, one JSON line per training row, for a config we wrote.

    .venv-llamafactory/bin/python tests/ecosystem/llamafactory_rows.py llamafactory.yaml rows.jsonl
"""

import json
import sys

import yaml
from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
from llamafactory.hparams import get_train_args
from llamafactory.model import load_tokenizer

with open(sys.argv[1]) as config:
    settings = yaml.safe_load(config)
settings.pop("eval_dataset", None)
settings.pop("eval_strategy", None)
model_args, data_args, training_args, _, _ = get_train_args(settings)
module = load_tokenizer(model_args)
template = get_template_and_fix_tokenizer(module["tokenizer"], data_args)
rows = get_dataset(template, model_args, data_args, training_args, stage="sft", **module)["train_dataset"]
with open(sys.argv[2], "w") as out:  # LLaMA-Factory prints an example to stdout itself
    for row in rows:
        out.write(json.dumps({"input_ids": row["input_ids"], "labels": row["labels"]}) + "\n")
