"""Every notebook in notebooks/ runs top to bottom (nbclient, with ipykernel
pinned in the test extra), so a notebook that breaks fails CI.

They run on small settings (a small seeded ConvNeXt, a few generated images) and import the
library rather than copying it. Committed without outputs (checked here too).
"""

from __future__ import annotations

from pathlib import Path

import nbclient
import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert {p.name for p in NOTEBOOKS} >= {
        "build_walkthrough.ipynb",
        "app_bundle.ipynb",
        "reading_an_audit.ipynb",
    }


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path: Path, tmp_path, monkeypatch):
    notebook = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in notebook.cells if c.cell_type == "code"), (
        f"{path.name}: commit notebooks without outputs"
    )
    monkeypatch.setenv("EDGE_CONVNEXT_WORK", str(tmp_path))
    monkeypatch.delenv("EDGE_CONVNEXT_MODEL", raising=False)
    monkeypatch.delenv("EDGE_CONVNEXT_REPORT", raising=False)
    client = nbclient.NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()  # raises CellExecutionError naming the failing cell
