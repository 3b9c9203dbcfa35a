"""``python -m benchmarks`` without the ``bench`` extra: help, the rows it can run, the extra named.

The peers are hidden from a subprocess by a meta-path finder that refuses to import them, so
these tests mean the same whether or not the extra is installed here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEERS = ("authlib", "azure", "httpx", "httpx2", "matplotlib")
EXTRA = "pip install -e '.[bench]'"

_WITHOUT_PEERS = """
import runpy, sys

class HidePeers:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, HidePeers())
sys.argv = ["benchmarks", *sys.argv[1:]]
runpy.run_module("benchmarks", run_name="__main__", alter_sys=True)
""".replace("HIDDEN", repr(set(PEERS)))


def without_peers(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own interpreter and package
        [sys.executable, "-c", _WITHOUT_PEERS, *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_finder_really_hides_the_peers() -> None:
    probe = subprocess.run(  # noqa: S603 - our own interpreter
        [sys.executable, "-c", _WITHOUT_PEERS.split("sys.argv")[0] + "import azure.core\n"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert probe.returncode == 1
    assert "ModuleNotFoundError: No module named 'azure'" in probe.stderr


def test_help_works_without_the_peers() -> None:
    done = without_peers("--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m benchmarks")
    assert EXTRA in done.stdout
    assert "``" not in done.stdout
    assert done.stderr == ""


def test_runs_the_rows_it_can_and_names_the_extra(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    plot = tmp_path / "plot.png"
    done = without_peers(
        "--quick",
        "-q",
        "--idle-wait",
        "0",
        "--only",
        "cold-burst",
        "--json",
        str(out),
        "--plot",
        str(plot),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    note = (
        "note: left out the authlib, azure-core, static-httpx, static-azure rows "
        f"(authlib, azure-core not installed); for every row: {EXTRA}"
    )
    assert done.stderr.splitlines()[0] == note
    assert note in done.stdout.splitlines()  # under the tables too
    assert f"no plot: matplotlib is not installed ({EXTRA})" in done.stdout
    assert not plot.exists()
    document = json.loads(out.read_text())
    assert set(document["meta"]["unavailable"]) == {
        "authlib",
        "azure-core",
        "static-httpx",
        "static-azure",
    }
    ran = {run["strategy"] for run in document["runs"]}
    assert ran == {"static", "naive", "naive+lock", "apimw_async Client", "apimw_async middleware"}
    for run in document["runs"]:
        if run["strategy"].startswith("apimw_async"):
            assert run["metrics"]["token_calls"] == 1, run
            assert run["metrics"]["errors"] == 0, run


def test_asking_for_a_missing_peer_names_the_extra() -> None:
    done = without_peers("--quick", "--only", "cold-burst", "--strategies", "static,authlib")
    assert done.returncode == 1
    assert done.stderr == f"authlib needs authlib, which is not installed: {EXTRA}\n"
    assert done.stdout == ""
