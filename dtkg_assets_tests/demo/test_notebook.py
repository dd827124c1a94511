"""notebooks/ledger.ipynb executed with nbclient against the ledger a real `dtkg demo` run leaves.

The kernel is the `python3` kernel spec that ipykernel installs into this virtualenv
(`<venv>/share/jupyter/kernels/python3`, argv[0] "python", which jupyter_client replaces by the
running interpreter); nothing is registered by the test. A check cell appended in memory confirms
the kernel runs this interpreter. Every number asserted is read independently from the snapshot.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import pytest
from jupyter_client.kernelspec import find_kernel_specs
from nbclient import NotebookClient

from dtkg_assets_tests.support.demo_home import DemoHome, copy_home, demo_env, snapshot

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "ledger.ipynb"
KERNEL_CHECK = "import sys\nprint('kernel-python:', sys.executable)"


@dataclass
class ExecutedNotebook:
    home: Path
    nb: Any
    demo: dict[str, Any]

    def outputs(self, tag: str) -> list[Any]:
        cells = [c for c in self.nb.cells if tag in c.get("metadata", {}).get("tags", [])]
        assert len(cells) == 1, f"expected one cell tagged {tag!r}"
        return list(cells[0].outputs)

    def text(self, tag: str) -> str:
        parts = []
        for out in self.outputs(tag):
            if out.output_type == "stream":
                parts.append(out.text)
            elif "data" in out:
                parts.append(out.data.get("text/plain", ""))
        return "\n".join(parts)


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory, demo_template: DemoHome) -> Iterator[ExecutedNotebook]:
    home = copy_home(demo_template, tmp_path_factory.mktemp("notebook") / "home").home
    demo = demo_template.summary
    assert "python3" in find_kernel_specs(), "ipykernel's python3 kernel spec is not installed in this environment"
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(KERNEL_CHECK, metadata={"tags": ["kernel-check"]}))
    client = NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    # Raises CellExecutionError (failing the tests) if any cell errors.
    client.execute(env=demo_env(home))
    yield ExecutedNotebook(home, nb, demo)


def test_committed_notebook_has_no_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code
    assert all(c.outputs == [] and c.execution_count is None for c in code)


def test_every_cell_ran_without_error_in_this_interpreter(executed: ExecutedNotebook) -> None:
    code = [c for c in executed.nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code)
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert f"kernel-python: {sys.executable}" in executed.text("kernel-check")
    # The notebook read the demo's home, not the default one.
    assert str(executed.home / "ledger.snapshot.duckdb") in executed.text("open")
    assert "status: healthy" in executed.text("open")


def test_tables_show_the_ledgers_numbers(executed: ExecutedNotebook) -> None:
    with snapshot(executed.home) as con:
        by_state = con.execute("SELECT state, count(*) FROM v_artifacts GROUP BY state").fetchall()
        failures = con.execute("SELECT reason, failure_class, host, jobs FROM v_failures").fetchall()
        yield_sources = con.execute("SELECT source, tried, stored, failed FROM v_yield_sources").fetchall()
        yield_hosts = con.execute("SELECT host, tried, stored, failed FROM v_yield_hosts").fetchall()
        yield_via = con.execute("SELECT via, stored FROM v_yield_via").fetchall()
        yield_failures = con.execute("SELECT reason, source, jobs FROM v_yield_failures").fetchall()
        run_ids = [r[0] for r in con.execute("SELECT run_id FROM runs").fetchall()]
        blobs, blob_bytes = con.execute("SELECT count(*), sum(size) FROM blobs").fetchall()[0]
        deduped, saved = con.execute(
            "SELECT count(*), coalesce(sum(bytes), 0) FROM artifact_jobs WHERE state = 'DEDUPED'"
        ).fetchall()[0]
        hosts = con.execute("SELECT host, requests FROM v_hosts").fetchall()
    states = dict(by_state)
    assert states["INDEXED"] == executed.demo["downloaded"] > 0

    text = executed.text("artifacts-by-state")
    for state, n in by_state:
        assert re.search(rf"^\s*\d+\s+{state}\s+{n}\s", text, re.M), f"{state} {n} not in:\n{text}"

    text = executed.text("failures")
    assert failures, "the sample corpus always has failures (404 first candidates, HTML pages)"
    for reason, klass, host, jobs in failures:
        assert re.search(rf"\s{reason}\s+{klass}\s+{re.escape(host)}\s+{jobs}\s", text), f"{reason} {host}"

    # Yield: by source field, by how the PDF was found, failures by reason (issue 11).
    text = executed.text("yield-sources")
    for source, tried, stored, failed in yield_sources:
        assert re.search(rf"\s{re.escape(source)}\s+{tried}\s+{stored}\s+{failed}\s", text), f"{source}\n{text}"
    text = executed.text("yield-hosts")
    for host, tried, stored, failed in yield_hosts:
        assert re.search(rf"\s{re.escape(host)}\s+{tried}\s+{stored}\s+{failed}\s", text), f"{host}\n{text}"
    # The DOIs (resolved through the demo's origin) count under the host that served their pages.
    assert "doi.org" not in {h for h, *_ in yield_hosts}, yield_hosts
    via = dict(yield_via)
    assert via["direct"] >= 30 and sum(v for k, v in via.items() if k != "direct") == 3, via
    text = executed.text("yield-via")
    for name, stored in yield_via:
        assert re.search(rf"\s{re.escape(name)}\s+{stored}\s", text), f"{name}\n{text}"
    text = executed.text("yield-failures")
    assert {r[0] for r in yield_failures} >= {"no_pdf_link", "http_404"}
    for reason, source, jobs in yield_failures:
        assert re.search(rf"\s{reason}\s+\w+\s+{re.escape(source)}\s+{jobs}\s", text), f"{reason} {source}"

    text = executed.text("runs")
    assert run_ids
    for run_id in run_ids:
        assert run_id[:8] in text

    assert f"{blobs} distinct PDFs stored, {blob_bytes:,} bytes" in executed.text("sizes")

    assert deduped == executed.demo["deduplicated"] == 1 and saved > 0
    assert re.search(rf"^\s*0\s+{deduped}\s+{saved}\s", executed.text("dedupe"), re.M), executed.text("dedupe")

    text = executed.text("hosts")
    for host, requests in hosts:
        assert re.search(rf"\s{re.escape(host)}\s+{requests}\s", text), f"{host} {requests}"


def test_at_least_two_plots(executed: ExecutedNotebook) -> None:
    pngs = [
        o for c in executed.nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})
    ]
    assert len(pngs) >= 2
    for tag in ("runs-plot", "sizes-plot", "yield-plot"):
        assert any("image/png" in o.get("data", {}) for o in executed.outputs(tag)), tag
