"""Fixtures for the interoperability, crash and CLI suites.

- `small_corpus`: tests/corpus/gen_corpus.py --profile small, generated once per session.
- `outposts`: a factory of Outpost servers, each in its own temporary directory with its own
  free loopback port; every server still running at the end of the test is killed, and its
  log is printed when the test failed.
- `orthancs`: a factory of Orthanc servers (forwarding.py), stopped at the end of the test.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import GEN_CORPUS, OUTPOST_BIN, Outpost  # noqa: E402


def pytest_configure(config):
    if not OUTPOST_BIN.is_file():
        raise pytest.UsageError(
            f"outpost binary not found at {OUTPOST_BIN}: build it with "
            "`cargo build --release -p outpost --features systemd` or set OUTPOST_BIN")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def _failed(request) -> bool:
    node = request.node
    return any(getattr(getattr(node, f"rep_{w}", None), "failed", False)
               for w in ("setup", "call"))


# -- corpus ----------------------------------------------------------------------------


@dataclass
class Corpus:
    root: Path            # only .dcm files below it (manifest.json is kept beside it)
    files: list[dict]     # manifest entries

    def path(self, f: dict) -> Path:
        return self.root / f["path"]

    def paths(self, files=None) -> list[Path]:
        return [self.path(f) for f in (self.files if files is None else files)]

    def with_role(self, role: str) -> list[dict]:
        return [f for f in self.files if role in f["Roles"]]

    def one(self, role: str) -> dict:
        found = self.with_role(role)
        assert len(found) == 1, f"{len(found)} files with role {role}"
        return found[0]

    def by_sop(self) -> dict[str, dict]:
        return {f["SOPInstanceUID"]: f for f in self.files}

    def studies(self) -> dict[str, list[dict]]:
        out = defaultdict(list)
        for f in self.files:
            out[f["StudyInstanceUID"]].append(f)
        return dict(out)

    def series(self) -> dict[str, list[dict]]:
        out = defaultdict(list)
        for f in self.files:
            out[f["SeriesInstanceUID"]].append(f)
        return dict(out)

    def by_syntax(self) -> dict[str, list[dict]]:
        out = defaultdict(list)
        for f in self.files:
            out[f["TransferSyntaxUID"]].append(f)
        return dict(out)

    def storage_contexts(self, syntaxes: list[str]) -> list[tuple[str, list[str]]]:
        classes = sorted({f["SOPClassUID"] for f in self.files})
        return [(c, list(syntaxes)) for c in classes]


def generate_corpus(out: Path, profile: str, *extra: str) -> Corpus:
    subprocess.run([sys.executable, str(GEN_CORPUS), str(out), "--profile", profile,
                    "--manifest", *extra], check=True, capture_output=True, timeout=300)
    # manifest.json goes beside the folder, so the folder holds only DICOM files (storescu
    # +sd and `outpost import` take every file in it).
    manifest = out.parent / f"{out.name}-manifest.json"
    shutil.move(out / "manifest.json", manifest)
    data = json.loads(manifest.read_text())
    return Corpus(out, data["files"])


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Corpus:
    corpus = generate_corpus(tmp_path_factory.mktemp("corpus") / "small", "small")
    assert len(corpus.files) == 38, "the small profile is documented as 38 files"
    return corpus


# -- servers ---------------------------------------------------------------------------


class OutpostFactory:
    def __init__(self, base: Path):
        self.base = base
        self.made: list[Outpost] = []

    def __call__(self, name: str = "outpost", start: bool = True, **kw) -> Outpost:
        o = Outpost(self.base / name, **kw)
        self.made.append(o)
        if start:
            o.start()
        return o

    def cleanup(self, failed: bool, report=print) -> None:
        for o in self.made:
            if o.alive():
                o.kill()
            if failed:
                report(f"\n----- log of {o.workdir.name} (port {o.port}) -----\n{o.log_tail(80)}")


def _factory(request, base: Path):
    f = OutpostFactory(base)
    yield f
    f.cleanup(_failed(request))


@pytest.fixture
def outposts(request, tmp_path):
    yield from _factory(request, tmp_path)


@pytest.fixture(scope="module")
def module_outposts(request, tmp_path_factory):
    base = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    f = OutpostFactory(base)
    yield f
    failed = request.session.testsfailed > 0
    f.cleanup(failed)


@pytest.fixture
def orthancs(request, tmp_path):
    """A factory of Orthanc servers (forwarding.Orthanc), stopped at the end of the test;
    their logs are printed when the test failed."""
    from forwarding import OrthancFactory

    f = OrthancFactory(tmp_path / "orthanc")
    yield f
    f.cleanup(_failed(request))


def pytest_collection_modifyitems(items):
    # A hung peer must not hang the suite (pytest-timeout); tests may set their own.
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(180))
