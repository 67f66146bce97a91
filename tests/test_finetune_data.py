"""Fine-tuning data: labeled files and Alpaca instructions read, checked, split and batched."""
import csv
import io
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinygrad_gpt import finetune_batches as fb
from tinygrad_gpt import finetune_data as fd
from tinygrad_gpt.cli import UserError
from tokenizer import BPETokenizer, CharTokenizer

IGNORE = fd.IGNORE_INDEX
# Printable text without NUL (the csv module's one forbidden character), newlines included.
TEXTS = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                min_size=1, max_size=30).filter(str.strip)
LABELS = st.sampled_from(["spam", "ham", "0", "1", "a b", "ünï"])


def write(folder, name, data):
    path = Path(folder) / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


def error_of(fn, *args, **kwargs):
    """The UserError's message, checked to be one line."""
    with pytest.raises(UserError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, message
    return message


# ---- reading labeled files -------------------------------------------------------------------

@given(rows=st.lists(st.tuples(TEXTS, LABELS), min_size=1, max_size=8),
       delimiter=st.sampled_from([",", "\t"]), split=st.booleans(),
       style=st.sampled_from([("\r\n", csv.QUOTE_MINIMAL), ("\n", csv.QUOTE_ALL)]))
def test_csv_and_tsv_round_trip_with_the_line_each_item_starts_on(rows, delimiter, split,
                                                                  style):
    """(With "\n" line ends, csv.writer leaves a field ending in "\r" unquoted, which no
    reader can tell from a "\r\n" line end: such files are written quoting every field.)"""
    out = io.StringIO(newline="")
    writer = csv.writer(out, delimiter=delimiter, lineterminator=style[0], quoting=style[1])
    writer.writerow(["label", "text"] + (["split"] if split else []))
    starts = []
    for k, (text, label) in enumerate(rows):
        starts.append(out.getvalue().count("\n") + 1)
        writer.writerow([label, text] + ([fd.SPLITS[k % 3].upper()] if split else []))
    with tempfile.TemporaryDirectory() as tmp:
        path = write(tmp, "d.csv" if delimiter == "," else "d.tsv", out.getvalue())
        items = fd.read_labeled(path)
    assert [(i["text"], i["label"]) for i in items] == rows
    assert [i["line"] for i in items] == starts
    assert [i["split"] for i in items] == [fd.SPLITS[k % 3] if split else None
                                           for k in range(len(rows))]


@given(rows=st.lists(st.tuples(TEXTS, st.one_of(LABELS, st.integers(-5, 5))), min_size=1,
                     max_size=8),
       blank=st.lists(st.booleans(), min_size=8, max_size=8), ascii=st.booleans(),
       as_list=st.booleans(), indent=st.sampled_from([None, 1, 4]))
def test_json_lines_and_json_lists_round_trip(rows, blank, ascii, as_list, indent):
    records = [{"txt": text, "y": label, "extra": [1]} for text, label in rows]
    if as_list:
        body = json.dumps(records, ensure_ascii=ascii, indent=indent)
        lines = body.split("\n")
        starts = [n for n, line in enumerate(lines, 1) if line.lstrip().startswith("{")]
        if indent is None:
            starts = [1] * len(rows)
    else:
        lines, starts = [], []
        for record, skip in zip(records, blank):
            lines += [""] * skip
            lines.append(json.dumps(record, ensure_ascii=ascii))
            starts.append(len(lines))
        body = "\n".join(lines) + "\n"
    with tempfile.TemporaryDirectory() as tmp:
        items = fd.read_labeled(write(tmp, "d.jsonl", body), text_column="txt",
                                label_column="y")
    assert [(i["text"], i["label"]) for i in items] == [(t, str(y)) for t, y in rows]
    assert [i["line"] for i in items] == starts
    assert all(i["split"] is None for i in items)


BAD_LABELED = [
    ("d.csv", b"text,label\nok,a\n\xff\xfe,b\n", "d.csv:3: not UTF-8"),
    ("d.csv", 'text,label\nok,a\n"never closed,b\n', "d.csv:3: malformed CSV"),
    ("d.csv", "text,label\nok,a\none,two,three\n", "d.csv:3: 3 fields, but the header has 2"),
    ("d.tsv", "text\tlabel\nok\ta\tb\n", "d.tsv:2: 3 fields"),
    ("d.csv", "body,label\nok,a\n", "d.csv:2: no 'text' (columns found: 'body', 'label')"),
    ("d.csv", "text,category\nok,a\n", "--label_column"),
    ("d.csv", "text,label\nok,a\n  ,b\n", "d.csv:3: the text is empty"),
    ("d.csv", "text,label\nok,a\nfine,\n", "d.csv:3: the label is ''"),
    ("d.csv", "text,label,split\nok,a,train\nx,b,dev\n", "d.csv:3: split is 'dev'; use train"),
    ("d.csv", "", "d.csv: no items"),
    ("d.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", label}\n', "d.jsonl:2: not valid"),
    ("d.jsonl", '{"text": "a", "label": "x"}\n[1, 2]\n', "d.jsonl:2: expected a JSON object"),
    ("d.jsonl", '{"text": "a", "label": "x"}\n{"text": 3, "label": "y"}\n',
     "d.jsonl:2: 'text' is 3, not a string"),
    ("d.jsonl", '{"text": "a", "label": null}\n', "d.jsonl:1: the label is None"),
    ("d.jsonl", '{"text": "a", "label": "x", "split": "val"}\n{"text": "b", "label": "y"}\n',
     "d.jsonl:2: no 'split' while other lines have one"),
    ("d.json", '[\n {"text": "a", "label": "x"},\n {"text": "b" "label": "y"}\n]\n',
     "d.json:3: not valid JSON"),
    ("d.json", '[\n {"text": "a", "label": "x"},\n\n {"label": "y"}\n]\n',
     "d.json:4: no 'text' (columns found: 'label')"),
    ("d.txt", "text,label\n", "unknown kind of file '.txt'; use .csv, .tsv or .jsonl"),
]


@pytest.mark.parametrize("name, data, expected", BAD_LABELED)
def test_bad_labeled_files_are_one_line_naming_file_and_line(tmp_path, name, data, expected):
    message = error_of(fd.read_labeled, write(tmp_path, name, data))
    assert expected in message, message
    assert "; " in message                          # a problem, then the fix


def test_a_missing_file_and_a_utf8_bom(tmp_path):
    assert "no such file" in error_of(fd.read_labeled, tmp_path / "none.csv")
    path = write(tmp_path, "bom.csv", b"\xef\xbb\xbftext,label\nhi,a\n")
    assert fd.read_labeled(path) == [{"text": "hi", "label": "a", "split": None, "line": 2}]


# ---- splitting -------------------------------------------------------------------------------

def labeled(counts):
    """{label: n} -> items, interleaved so that file order is not grouped by label."""
    items, k = [], 0
    while any(counts.values()):
        for label in sorted(counts):
            if counts[label]:
                counts[label] -= 1
                k += 1
                items.append({"text": f"t{k}", "label": label, "split": None, "line": k + 1})
    return items


@given(counts=st.dictionaries(st.sampled_from("abcde"), st.integers(3, 40), min_size=2),
       seed=st.integers(0, 2**32 - 1))
def test_stratified_split_partitions_and_keeps_every_class_in_every_split(counts, seed):
    items = labeled(dict(counts))
    train, val, test, labels = fd.split_labeled(items, seed)
    assert labels == sorted(counts)
    assert sorted(i["line"] for i in train + val + test) == [i["line"] for i in items]
    for part in (train, val, test):                      # file order kept in each split
        assert [i["line"] for i in part] == sorted(i["line"] for i in part)
    for label, n in counts.items():
        n_val = sum(i["label"] == label for i in val)
        n_test = sum(i["label"] == label for i in test)
        assert n_val >= 1 and n_test >= 1 and n - n_val - n_test >= 1
        assert abs(n_val - 0.1 * n) <= 1 and abs(n_test - 0.1 * n) <= 1
    again = fd.split_labeled(labeled(dict(counts)), seed)
    assert [[i["line"] for i in part] for part in again[:3]] == \
        [[i["line"] for i in part] for part in (train, val, test)]


def test_rare_classes_go_to_train_and_a_different_seed_changes_the_split():
    items = labeled({"a": 30, "b": 30, "rare": 2})
    train, val, test, _ = fd.split_labeled(items, 0)
    assert sum(i["label"] == "rare" for i in train) == 2
    other = fd.split_labeled(items, 1)
    assert [i["line"] for i in other[1]] != [i["line"] for i in val]


def test_the_files_own_split_is_used_and_checked():
    items = labeled({"a": 4, "b": 4})
    for k, item in enumerate(items):
        item["split"] = fd.SPLITS[k % 3]
    train, val, test, labels = fd.split_labeled(items, 0)
    assert [i["split"] for i in train + val + test] == ["train"] * 3 + ["val"] * 3 + ["test"] * 2
    for item in val:
        item["split"] = "train"
    assert "the val split is empty" in error_of(fd.split_labeled, items, 0, source="d.csv")


def test_split_errors_name_the_problem():
    assert "every item has the label 'a'" in error_of(fd.split_labeled, labeled({"a": 9}), 0)
    items = labeled({"a": 6, "b": 6})
    a_items = [i for i in items if i["label"] == "a"]
    b_items = [i for i in items if i["label"] == "b"]
    for k, item in enumerate(a_items):
        item["split"] = fd.SPLITS[k % 3]
    for k, item in enumerate(b_items):
        item["split"] = ("val", "test")[k % 2]
    message = error_of(fd.split_labeled, items, 0, source="d.csv")
    assert message.startswith(f"d.csv:{b_items[0]['line']}: the label 'b' is in val but never "
                              "in train"), message
    assert "empty" in error_of(fd.split_labeled, labeled({"a": 2, "b": 2}), 0)
    mixed = labeled({"a": 3, "b": 3})
    mixed[0]["split"] = "train"
    assert "d.csv:3: no split while other items have one" in error_of(
        fd.split_labeled, mixed, 0, source="d.csv")
    assert "sum to 1" in error_of(fd.split_labeled, mixed, 0, fractions=(0.9, 0.1, 0.0))


# ---- instructions ----------------------------------------------------------------------------

def test_format_prompt_is_the_alpaca_template_exactly():
    head = ("Below is an instruction that describes a task. Write a response that "
            "appropriately completes the request.")
    assert fd.format_prompt("Name a color.") == (
        f"{head}\n\n### Instruction:\nName a color.\n\n### Response:\n")
    assert fd.format_prompt("Translate.", "chat") == (
        f"{head}\n\n### Instruction:\nTranslate.\n\n### Input:\nchat\n\n### Response:\n")
    assert fd.format_prompt("Translate.", "") == fd.format_prompt("Translate.")


def test_instructions_read_from_a_json_list_and_from_json_lines(tmp_path):
    records = [{"instruction": "Add.", "input": "1 2", "output": "3", "id": 7},
               {"instruction": "Greet.", "output": "Hello."}]
    listed = fd.read_instructions(write(tmp_path, "a.json", json.dumps(records, indent=2)))
    lines = fd.read_instructions(write(tmp_path, "a.jsonl",
                                       "\n".join(json.dumps(r) for r in records) + "\n"))
    expected = [{"instruction": "Add.", "input": "1 2", "output": "3", "split": None},
                {"instruction": "Greet.", "input": "", "output": "Hello.", "split": None}]
    for items, starts in ((listed, [2, 8]), (lines, [1, 2])):
        assert [{k: v for k, v in i.items() if k != "line"} for i in items] == expected
        assert [i["line"] for i in items] == starts


BAD_INSTRUCTIONS = [
    ('[{"instruction": "a", "output": "b"},\n {"instruction": "c"}]', "a.json:2: no 'output' "
     "(keys found: 'instruction')"),
    ('{"instruction": "a", "output": "b"}\n{"output": "b"}\n', "a.json:2: no 'instruction'"),
    ('{"instruction": "a", "input": 5, "output": "b"}\n', "a.json:1: 'input' is 5, not a string"),
    ('{"instruction": "a", "output": ["b"]}\n', "a.json:1: 'output' is ['b'], not a string"),
    ('[\n{"instruction": "a", "output": "b"},\n{"instruction": " ", "output": "b"}\n]',
     "a.json:3: 'instruction' is empty"),
    ('{"instruction": "a", "output": ""}\n', "a.json:1: 'output' is empty"),
    ('[{"instruction": "a", "output": "b"},\n "text"]', "a.json:2: expected a JSON object"),
    ('[{"instruction": "a", "output": "b"},\n]', "a.json:2: not valid JSON"),
    ('[]', "a.json: no items"),
    ('{"instruction": "a", "output": "b", "split": "eval"}\n', "a.json:1: split is 'eval'"),
]


@pytest.mark.parametrize("body, expected", BAD_INSTRUCTIONS)
def test_bad_instruction_files_name_the_line(tmp_path, body, expected):
    message = error_of(fd.read_instructions, write(tmp_path, "a.json", body))
    assert expected in message, message


def test_instructions_split_by_their_own_split_or_seeded():
    items = [{"instruction": f"i{k}", "input": "", "output": "o", "split": None, "line": k + 1}
             for k in range(40)]
    train, val, test = fd.split_instructions(items, seed=3)
    assert (len(train), len(val), len(test)) == (34, 4, 2)
    assert sorted(i["line"] for i in train + val + test) == list(range(1, 41))
    assert fd.split_instructions(items, seed=3) == (train, val, test)
    assert "the val split is empty" in error_of(fd.split_instructions, items[:2], 0)
    for k, item in enumerate(items):
        item["split"] = "test" if k == 0 else "val" if k < 3 else "train"
    train, val, test = fd.split_instructions(items, 0)
    assert [i["line"] for i in test] == [1] and [i["line"] for i in val] == [2, 3]


# ---- token ids and batches -------------------------------------------------------------------

TOK = BPETokenizer.train("The quick brown fox jumps over the lazy dog; 0123456789. " * 30, 300)
END = TOK.special_tokens["<|endoftext|>"]
WORDS = st.text(st.sampled_from("abcdefghij xyz.,\n"), min_size=1, max_size=40).filter(str.strip)


def instruction_items(triples):
    return [{"instruction": i, "input": x, "output": o, "split": None, "line": k + 1}
            for k, (i, x, o) in enumerate(triples)]


@given(triples=st.lists(st.tuples(WORDS, st.one_of(st.just(""), WORDS), WORDS), min_size=1,
                        max_size=7),
       max_length=st.integers(1, 90), batch_size=st.integers(1, 4), mask=st.booleans())
def test_instruction_targets_are_masked_exactly_where_they_should_be(triples, max_length,
                                                                     batch_size, mask):
    items = instruction_items(triples)
    expected, truncated, dropped = [], 0, 0        # per kept item: (ids, n_prompt, length)
    for i, x, o in triples:
        prompt = TOK.encode_ordinary(fd.format_prompt(i, x))
        ids = prompt + TOK.encode_ordinary(o) + [END]
        length = min(len(ids) - 1, max_length)
        truncated += len(ids) - 1 > max_length
        if mask and len(prompt) - 1 >= length:
            dropped += 1
        else:
            expected.append((ids, len(prompt), length))
    if not expected:
        assert "every prompt is longer than --max_length" in error_of(
            fb.InstructionBatches, items, TOK, END, max_length, batch_size, mask_prompt=mask)
        return
    batches = fb.InstructionBatches(items, TOK, END, max_length, batch_size, mask_prompt=mask)
    assert (batches.truncated, batches.dropped) == (truncated, dropped)
    assert batches.dropped <= batches.truncated
    rows = [(x[r], y[r]) for x, y in batches.in_order() for r in range(len(x))]
    assert len(rows) == len(expected)
    for (x, y), (ids, n_prompt, length) in zip(rows, expected):
        assert x.dtype == np.int64 and y.dtype == np.int64
        assert x[:length].tolist() == ids[:length] and (x[length:] == END).all()
        for t in range(len(y)):
            ignored = t >= length or (mask and t < n_prompt - 1)
            assert (y[t] == IGNORE) == ignored, (t, y.tolist())
            if not ignored:
                assert y[t] == ids[t + 1]
        if len(ids) - 1 <= max_length:              # not cut: its end token is a target
            assert y[length - 1] == END
        assert (y != IGNORE).any()
    for x, y in batches.in_order():                 # padded to the batch's longest, no further
        assert x.shape == y.shape and (y[:, -1] != IGNORE).any()


@given(texts=st.lists(st.tuples(WORDS, st.sampled_from(["neg", "pos", "mid"])), min_size=1,
                      max_size=9),
       max_length=st.integers(1, 30), batch_size=st.integers(1, 4))
def test_classification_batches_pad_to_the_longest_and_point_at_the_last_token(
        texts, max_length, batch_size):
    labels = ["mid", "neg", "pos"]
    items = [{"text": t, "label": y, "split": None, "line": k + 2}
             for k, (t, y) in enumerate(texts)]
    batches = fb.ClassificationBatches(items, TOK, labels, END, max_length, batch_size)
    ids = [TOK.encode_ordinary(t)[:max_length] for t, _ in texts]
    assert batches.truncated == sum(len(TOK.encode_ordinary(t)) > max_length for t, _ in texts)
    rows = 0
    for x, last, y in batches.in_order():
        assert x.dtype == last.dtype == y.dtype == np.int64
        assert x.shape[1] == max(last) + 1                  # the longest item sets T
        for r in range(len(x)):
            seq = ids[rows + r]
            assert last[r] == len(seq) - 1 and x[r, last[r]] == seq[-1]
            assert x[r, :len(seq)].tolist() == seq and (x[r, len(seq):] == END).all()
            assert y[r] == labels.index(texts[rows + r][1])
        rows += len(x)
    assert rows == len(items)


@given(n=st.integers(1, 12), batch_size=st.integers(1, 5), seed=st.integers(0, 2**32 - 1),
       stop=st.integers(0, 20))
def test_epochs_visit_every_item_once_and_resume_from_state_is_exact(n, batch_size, seed, stop):
    items = [{"text": "x" * (k + 1), "label": "ab"[k % 2], "line": k + 1} for k in range(n)]

    def make():
        return fb.ClassificationBatches(items, TOK, ["a", "b"], END, 64, batch_size, seed)
    batches = make()
    assert len(batches) == -(-n // batch_size)
    for epoch in range(3):
        seen = sorted(int(i) for _, last, _ in batches.epoch_batches(epoch) for i in last)
        assert seen == list(range(n))                 # last = len - 1 = k identifies item k
    walked = [batches.next_batch() for _ in range(3 * len(batches))]
    expected = [b for e in range(3) for b in batches.epoch_batches(e)]
    assert all(all((p == q).all() for p, q in zip(a, b)) for a, b in zip(walked, expected))
    first, second = make(), make()
    for _ in range(stop):
        first.next_batch()
    second.load_state_dict(json.loads(json.dumps(first.state_dict())))
    for _ in range(5):
        assert all((p == q).all() for p, q in zip(first.next_batch(), second.next_batch()))


def test_batching_errors_name_the_item():
    char = CharTokenizer.train("abc ")
    items = [{"text": "abc", "label": "a", "line": 2}, {"text": "abz", "label": "b", "line": 3}]
    message = error_of(fb.ClassificationBatches, items, char, ["a", "b"], 0, 8, 2,
                       source="d.csv")
    assert message.startswith("d.csv:3: cannot be encoded") and "'z'" in message
    assert "d.csv:2: the label 'a' is not one of the model's labels ['b']" in error_of(
        fb.ClassificationBatches, items, TOK, ["b"], END, 8, 2, source="d.csv")
    assert "--max_length 0" in error_of(fb.ClassificationBatches, items, TOK, ["a", "b"],
                                        END, 0, 2)
    assert "--batch_size 0" in error_of(fb.ClassificationBatches, items, TOK, ["a", "b"],
                                        END, 8, 0)
    assert "no items" in error_of(fb.ClassificationBatches, [], TOK, ["a"], END, 8, 2)


def test_special_token_text_in_data_is_ordinary_text():
    items = instruction_items([("Say <|endoftext|>", "", "ok")])
    x, y = fb.InstructionBatches(items, TOK, END, 500, 1).next_batch()
    assert (x[0] != END).all() and y[0, -1] == END and (y[0] == END).sum() == 1
