"""Fine-tuning data: labeled texts and Alpaca instructions read from files, checked and split;
the Alpaca prompt template. NumPy only; no model code here. The batches of token ids are
tinygrad_gpt/finetune_batches.py.

    items = read_labeled("spam.csv")                  # [{text, label, split, line}]
    train, val, test, labels = split_labeled(items, seed=1337)
    batches = ClassificationBatches(train, tok, labels, end_id, max_length=256, batch_size=8)
    x, last, y = batches.next_batch()                 # (B, T), (B,), (B,)

    items = read_instructions("alpaca.json")          # [{instruction, input, output, split, line}]
    batches = InstructionBatches(items, tok, end_id, max_length=256, batch_size=8)
    x, y = batches.next_batch()                       # (B, T), (B, T); y is -100 where ignored

Batches are padded with the end-of-text id to the longest item in the batch, not to the
context length. Epoch e visits the items in the permutation drawn from (seed, e), so a run
resumed from state_dict() sees the same batches as one that never stopped.
Bad input is a UserError whose one line names the file, the line, the problem and the fix.
"""
import csv
import io
import json
import re
from pathlib import Path

import numpy as np

from .cli import UserError

IGNORE_INDEX = -100          # a target that counts for nothing (cross_entropy's ignore_index)
SPLITS = ("train", "val", "test")


def show(value, limit=40):
    """A user's value for a one-line message: repr (no raw newlines), cut to `limit`."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 4] + "...'"


def read_text(path):
    """A UTF-8 file's text (a leading BOM dropped); missing or not UTF-8 is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file; check the path given to --data")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x}); "
                        "save the file as UTF-8") from None


# ---- labeled texts: CSV, TSV, JSON Lines -----------------------------------------------------

def read_labeled(path, text_column="text", label_column="label"):
    """A CSV (.csv), TSV (.tsv) or JSON Lines (.jsonl, .json: one object a line, or a JSON list)
    file -> [{"text", "label", "split", "line"}]. Labels are strings as read (JSON numbers as
    written: 1 -> "1"); split is the file's `split` column (train, val or test) or None when it
    has none; line is the line the item starts on."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".tsv", ".jsonl", ".json"):
        raise UserError(f"{path}: unknown kind of file {suffix or '(no suffix)'!r}; "
                        "use .csv, .tsv or .jsonl")
    text = read_text(path)
    if suffix in (".csv", ".tsv"):
        records = delimited_records(path, text, "," if suffix == ".csv" else "\t")
    else:
        records = json_records(path, text)
    if not records:
        raise UserError(f"{path}: no items in the file; add lines with "
                        f"{text_column!r} and {label_column!r}")
    with_split = any(isinstance(r, dict) and "split" in r for _, r in records)
    return [labeled_item(path, line, record, text_column, label_column, with_split)
            for line, record in records]


def delimited_records(path, text, delimiter):
    """CSV/TSV text -> [(line, {column: value})], the header's names stripped. Lines end at
    "\n" only (a lone "\r" is a character, in quotes), as in every other line number here."""
    kind = "CSV" if delimiter == "," else "TSV"
    reader = csv.reader(io.StringIO(text, newline="\n"), delimiter=delimiter, strict=True)
    records, header, start = [], None, 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return records
        except csv.Error as e:
            raise UserError(f"{path}:{start}: malformed {kind} ({e}); "
                            "check the quotes that start on this line") from None
        if row and header is None:
            header = [name.strip() for name in row]
        elif row and len(row) != len(header):
            raise UserError(f"{path}:{start}: {len(row)} fields, but the header has "
                            f"{len(header)}; quote fields that contain "
                            f"{'a comma' if delimiter == ',' else 'a tab'}")
        elif row:
            records.append((start, dict(zip(header, row))))
        start = reader.line_num + 1


JSON_SPACE = re.compile(r"[ \t\n\r]*")


def json_records(path, text):
    """JSON Lines, or one JSON list, -> [(line, value)] with the line each value starts on."""
    if text.lstrip(" \t\n\r").startswith("["):
        return json_list(path, text)
    records = []
    for number, line in enumerate(text.split("\n"), 1):      # not splitlines: U+2028 in JSON
        if line.strip():
            try:
                records.append((number, json.loads(line)))
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{number}: not valid JSON ({e.msg}, column {e.colno}); "
                                "write one JSON object a line") from None
    return records


def json_list(path, text):
    """A JSON list's elements with the line each starts on: json.loads checks the whole text,
    then JSONDecoder.raw_decode steps over the elements to find where each begins."""
    try:
        values = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno}); "
                        "check the file with a JSON validator") from None
    decoder, records = json.JSONDecoder(), []
    pos, line, counted = text.index("[") + 1, 1, 0          # line = 1 + newlines before counted
    for value in values:
        pos = JSON_SPACE.match(text, pos).end()
        line, counted = line + text.count("\n", counted, pos), pos
        records.append((line, value))
        pos = JSON_SPACE.match(text, decoder.raw_decode(text, pos)[1]).end() + 1  # past ","
    return records


def labeled_item(path, line, record, text_column, label_column, with_split):
    where = f"{path}:{line}"
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(record).__name__}; "
                        f"write {{{text_column!r}: ..., {label_column!r}: ...}}")
    for column, flag in ((text_column, "--text_column"), (label_column, "--label_column")):
        if column not in record:
            found = ", ".join(map(repr, record)) or "none"
            raise UserError(f"{where}: no {column!r} (columns found: {found}); rename the "
                            f"column or pass {flag} NAME")
    text, label = record[text_column], record[label_column]
    if not isinstance(text, str):
        raise UserError(f"{where}: {text_column!r} is {show(text)}, not a string; quote it")
    if not text.strip():
        raise UserError(f"{where}: the text is empty; remove the line or write its text")
    if isinstance(label, (bool, int, float)):
        label = json.dumps(label)                           # 1 -> "1", true -> "true"
    if not isinstance(label, str) or not label.strip():
        raise UserError(f"{where}: the label is {show(label)}; give every item a label "
                        "(a string or a number)")
    return {"text": text, "label": label, "split": item_split(where, record, with_split),
            "line": line}


def item_split(where, record, with_split):
    """The record's `split` (train/val/test, any case), None when the file has none."""
    if not with_split:
        return None
    if "split" not in record:
        raise UserError(f"{where}: no 'split' while other lines have one; give every line a "
                        "split (train, val or test), or none")
    value = record["split"]
    split = value.strip().lower() if isinstance(value, str) else value
    if split not in SPLITS:
        raise UserError(f"{where}: split is {show(value)}; use train, val or test")
    return split


def split_labeled(items, seed, fractions=(0.8, 0.1, 0.1), source="the data"):
    """items -> (train, val, test, labels), labels the sorted class names.

    The items' own splits when they have them, else a stratified seeded split: each class is
    divided in the proportions `fractions`; a class of n >= 3 items puts at least one in each
    split (and so at least one in train), a class of 1 or 2 items goes to train whole.
    Then a single class, an empty split, and a val/test label never seen in train are errors.
    """
    check_fractions(fractions)
    if not items:
        raise UserError(f"{source}: no items; add labeled texts")
    labels = sorted({item["label"] for item in items})
    if len(labels) < 2:
        raise UserError(f"{source}: every item has the label {show(labels[0])}; "
                        "classification needs at least two labels")
    parts = own_splits(items, source)
    if parts is None:
        rng = np.random.default_rng(seed)
        chosen = {name: [] for name in SPLITS}      # split -> item indices
        for label in labels:
            where = [i for i, item in enumerate(items) if item["label"] == label]
            for name, picked in zip(SPLITS, divide(rng.permutation(where), fractions)):
                chosen[name].extend(picked)
        parts = [[items[i] for i in sorted(chosen[name])] for name in SPLITS]
    check_splits(parts, source, labelled=True)
    return (*parts, labels)


def divide(order, fractions):
    """A shuffled list of n indices -> (train, val, test) pieces; with n >= 3 none is empty."""
    n = len(order)
    if n < 3:
        return list(order), [], []
    n_val, n_test = (max(1, int(n * f + 0.5)) for f in fractions[1:])
    while n - n_val - n_test < 1:
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    return (list(order[n_val + n_test:]), list(order[:n_val]),
            list(order[n_val:n_val + n_test]))


def check_fractions(fractions):
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-6:
        raise UserError(f"split fractions {tuple(fractions)}: give three positive numbers "
                        "(train, val, test) that sum to 1")


def own_splits(items, source):
    """[train, val, test] from the items' "split" keys; None when no item has one."""
    given = [item.get("split") is not None for item in items]
    if not any(given):
        return None
    if not all(given):
        item = items[given.index(False)]
        raise UserError(f"{where_of(item, source)}: no split while other items have one; "
                        "give every item a split, or none")
    return [[item for item in items if item["split"] == name] for name in SPLITS]


def check_splits(parts, source, labelled):
    for name, part in zip(SPLITS, parts):
        if not part:
            raise UserError(f"{source}: the {name} split is empty; add items (3 or more per "
                            f"label for a seeded split) or mark some with split={name}")
    if labelled:
        seen = {item["label"] for item in parts[0]}
        for name, part in zip(SPLITS[1:], parts[1:]):
            for item in part:
                if item["label"] not in seen:
                    raise UserError(f"{where_of(item, source)}: the label "
                                    f"{show(item['label'])} is in {name} but never in train; "
                                    "add train items with it, or remove it")


def where_of(item, source):
    return f"{source}:{item['line']}" if item.get("line") else source


# ---- instructions (Alpaca) -------------------------------------------------------------------

def read_instructions(path):
    """A JSON list, or JSON Lines, of {"instruction", "input", "output"} (Alpaca's format;
    "input" may be missing or empty, other keys are ignored) -> [{"instruction", "input",
    "output", "split", "line"}], split from an optional "split" key (train/val/test)."""
    path = Path(path)
    records = json_records(path, read_text(path))
    if not records:
        raise UserError(f"{path}: no items; write a JSON list of "
                        '{"instruction": ..., "input": ..., "output": ...}')
    with_split = any(isinstance(r, dict) and "split" in r for _, r in records)
    items = []
    for line, record in records:
        where = f"{path}:{line}"
        if not isinstance(record, dict):
            raise UserError(f"{where}: expected a JSON object, got {type(record).__name__}; "
                            'write {"instruction": ..., "input": ..., "output": ...}')
        for key in ("instruction", "output"):
            if key not in record:
                found = ", ".join(map(repr, record)) or "none"
                raise UserError(f"{where}: no {key!r} (keys found: {found}); add it")
        for key in ("instruction", "input", "output"):
            if key in record and not isinstance(record[key], str):
                raise UserError(f"{where}: {key!r} is {show(record[key])}, not a string; "
                                "quote it")
        for key in ("instruction", "output"):
            if not record[key].strip():
                raise UserError(f"{where}: {key!r} is empty; write it, or remove the item")
        items.append({"instruction": record["instruction"], "input": record.get("input", ""),
                      "output": record["output"], "line": line,
                      "split": item_split(where, record, with_split)})
    return items


def split_instructions(items, seed, fractions=(0.85, 0.1, 0.05), source="the data"):
    """items -> (train, val, test): the items' own splits, else a seeded shuffle divided in
    `fractions` (Raschka ch. 7 uses 85/10/5) with none empty from 3 items on."""
    check_fractions(fractions)
    parts = own_splits(items, source)
    if parts is None:
        order = np.random.default_rng(seed).permutation(len(items))
        parts = [[items[i] for i in sorted(piece)] for piece in divide(order, fractions)]
    check_splits(parts, source, labelled=False)
    return tuple(parts)


def format_prompt(instruction, input=""):
    """The Alpaca prompt (Raschka ch. 7's format_input, then the response header), exactly:

        "Below is an instruction that describes a task. Write a response that "
        "appropriately completes the request.\\n\\n### Instruction:\\n{instruction}"
        + "\\n\\n### Input:\\n{input}"         (only when input is not empty)
        + "\\n\\n### Response:\\n"

    The response follows directly; training appends <|endoftext|> after it.
    """
    prompt = ("Below is an instruction that describes a task. Write a response that "
              f"appropriately completes the request.\n\n### Instruction:\n{instruction}")
    if input:
        prompt += f"\n\n### Input:\n{input}"
    return prompt + "\n\n### Response:\n"
