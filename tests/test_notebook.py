"""The walkthrough notebook runs top to bottom (small parameters); the executed copy is kept as an artifact."""

import importlib.util
import json
import os
import shutil
from pathlib import Path

import keras
import nbformat
import pytest
from nbclient import NotebookClient

from conftest import REPO

ARTIFACTS = REPO / "tests" / "artifacts"
NOTEBOOK = REPO / "notebooks" / "walkthrough.ipynb"
SMALL = {"IMAGE_SIZE": 64, "EPOCHS": 2, "BATCH_SIZE": 4}
NO_DIAGRAM = "No diagram: keras.utils.plot_model needs Graphviz"


def has_graphviz() -> bool:
    """What keras.utils.plot_model needs: pydot and Graphviz's `dot` program (a system package)."""
    return shutil.which("dot") is not None and importlib.util.find_spec("pydot") is not None


def test_walkthrough_runs_headless(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    parameters = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "# Parameters" in c.source)
    overrides = {**SMALL, "OUTPUT": str(tmp_path / "run")}
    nb.cells.insert(parameters + 1, nbformat.v4.new_code_cell(
        "# CI parameters\n" + "\n".join(f"{k} = {v!r}" for k, v in overrides.items())
    ))
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(REPO / "notebooks")}})
    try:
        client.execute()  # raises CellExecutionError naming the failing cell
    finally:
        ARTIFACTS.mkdir(exist_ok=True)
        nbformat.write(nb, ARTIFACTS / "walkthrough.executed.ipynb")
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    printed = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    # Lab split, diagram (with Graphviz; a one-line note without it), augmentation grid, curves, test grid,
    # own photo, the shipped weights' dial.
    if has_graphviz():
        assert len(images) >= 7 and NO_DIAGRAM not in printed
    else:
        assert len(images) >= 6 and NO_DIAGRAM in printed
    summary = json.loads((tmp_path / "run" / "test" / "summary.json").read_text())
    held_out = json.loads((tmp_path / "run" / "split.json").read_text())["test"]
    assert summary["n_images"] == len(held_out) == 2  # the notebook's "../data" finds its own split
    committed = NOTEBOOK.read_text()
    assert '"outputs": []' in committed and len(committed) < 50_000  # the committed notebook stays small


def diagram_cell() -> str:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    return next(c.source for c in nb.cells if c.cell_type == "code" and "plot_model" in c.source)


@pytest.mark.parametrize("graphviz", [False, True, "broken"], ids=["without-dot", "with-dot", "failing-dot"])
def test_diagram_cell_with_and_without_graphviz(graphviz, tmp_path, monkeypatch, capsys):
    """The diagram cell alone, on a tiny model: a clean machine without Graphviz, or with a `dot` that fails
    (a broken install), gets the note, not an error."""
    if graphviz is True and not has_graphviz():
        pytest.skip("needs Graphviz's `dot` on PATH and pydot")
    if graphviz is False:  # every folder that holds a `dot` leaves PATH
        kept = [d for d in os.environ.get("PATH", "").split(os.pathsep) if not shutil.which("dot", path=d)]
        monkeypatch.setenv("PATH", os.pathsep.join(kept))
    if graphviz == "broken":  # a `dot` first on PATH that fails whatever it is asked
        if importlib.util.find_spec("pydot") is None:
            pytest.skip("needs pydot")
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        (bin_dir / "dot").write_text("#!/bin/sh\necho 'dot: broken install' >&2\nexit 3\n")
        (bin_dir / "dot").chmod(0o755)
        monkeypatch.setenv("PATH", os.pathsep.join([str(bin_dir), os.environ.get("PATH", "")]))
    shown = []
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    exec(diagram_cell(), {"Path": Path, "OUTPUT": str(tmp_path), "model": model, "colorizer_of": lambda m: m,
                          "Image": lambda filename: filename, "display": shown.append})
    if graphviz is True:
        assert shown == [str(tmp_path / "model.png")] and (tmp_path / "model.png").stat().st_size > 0
    else:
        assert shown == [] and not (tmp_path / "model.png").exists()
        assert NO_DIAGRAM in capsys.readouterr().out
