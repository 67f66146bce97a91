"""The notebook course, docs/notebooks/: stored without outputs, and each notebook run top to
bottom by nbclient (a notebook that raises, or runs past its time limit, fails the suite).

The notebooks are the ones the course lists (tinygrad_gpt/course/__init__.py's NOTEBOOKS),
each in its own kernel, from docs/notebooks/ as the working folder (their relative links
and paths are the reader's), this checkout first on the kernel's path; the default corpus
comes from the usual cache (fetched once per machine). Skipped, with the reason, when nbclient or ipykernel is missing
(pip install -e ".[dev]").
"""
import importlib.util
import json
import os
import time
from pathlib import Path

import pytest

from tinygrad_gpt.course import NOTEBOOKS

FOLDER = Path(__file__).resolve().parents[1] / "docs" / "notebooks"
TIMEOUT = {"06_finetuning.ipynb": 150}          # seconds per notebook (whole run)
DEFAULT_TIMEOUT = 100
needs_kernel = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("nbclient", "nbformat", "ipykernel")),
    reason='the notebooks need nbclient, nbformat and ipykernel: pip install -e ".[dev]"')


def test_the_folder_holds_exactly_the_course():
    assert sorted(p.name for p in FOLDER.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_stored_without_outputs_or_execution_counts(name):
    notebook = json.loads((FOLDER / name).read_text(encoding="utf-8"))
    assert notebook["cells"], name
    first = notebook["cells"][0]
    assert first["cell_type"] == "markdown" and "goal" in "".join(first["source"]).lower(), \
        f"{name}: the first cell states the notebook's goal"
    for i, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"{name} cell {i}: outputs committed"
            assert cell.get("execution_count") is None, f"{name} cell {i}: execution count"
    sources = "".join("".join(c["source"]) for c in notebook["cells"])
    assert "Exercise" in sources, f"{name}: ends with exercises"


@needs_kernel
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_runs_top_to_bottom(name, monkeypatch):
    import nbclient
    import nbformat
    notebook = nbformat.read(FOLDER / name, as_version=4)
    limit = TIMEOUT.get(name, DEFAULT_TIMEOUT)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # One BLAS thread: the notebooks' matrices are small, and two OpenBLAS threads on a busy
    # 2-core test machine wait on each other (a notebook ran 5-20x slower so); same results.
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    root = str(FOLDER.parents[1])               # the kernel imports this checkout's code
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [root, os.environ.get(
        "PYTHONPATH")])))
    client = nbclient.NotebookClient(notebook, timeout=limit, kernel_name="python3",
                                     resources={"metadata": {"path": str(FOLDER)}})
    before, t0 = sorted(os.listdir(FOLDER)), time.perf_counter()
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as e:      # the cell and its traceback
        pytest.fail(f"{name}: a cell raised:\n{str(e)[-3000:]}")
    except nbclient.exceptions.CellTimeoutError:
        pytest.fail(f"{name}: a cell ran past the notebook's {limit} s")
    seconds = time.perf_counter() - t0
    assert seconds < limit, f"{name}: {seconds:.0f} s, over its {limit} s"
    printed = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code"
                      for o in c.outputs)
    assert "Traceback" not in printed
    assert sorted(os.listdir(FOLDER)) == before, f"{name} left files in docs/notebooks/"
