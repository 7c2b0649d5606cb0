"""What a release ships: ``python -m build`` on a clean copy of the repository gives an sdist and a
wheel with LICENSE, the posts migrations and the sample data; the wheel, installed into a fresh
venv, runs ``dbkit setup`` from a directory that is not the checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path

import pytest
from helpers import clean_env

REPO = Path(__file__).resolve().parent.parent
CONSTRAINTS = REPO / ".ci" / "constraints.txt"

pytestmark = pytest.mark.slow  # a build (~10 s) and a venv with dbkit's dependencies (~20 s)


@dataclass(frozen=True)
class Dist:
    wheel: Path
    sdist: Path


def _clean_copy(dest: Path) -> None:
    """The tracked files of the working tree, as a release checkout would have them (no .venv,
    no egg-info or build/ left behind by an editable install)."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for f in filter(None, files):
        src, dst = REPO / f, dest / f
        if not src.exists():  # deleted in the working tree, not yet committed
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), dst)
        else:
            shutil.copy2(src, dst)


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dist]:
    work = tmp_path_factory.mktemp("build")
    src, out = work / "src", work / "dist"
    _clean_copy(src)
    # Without --sdist/--wheel, build makes the sdist and then the wheel *from the sdist*: a file
    # the sdist forgets is missing from the wheel too, so this also proves the sdist complete.
    proc = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(src)],
                          capture_output=True, text=True, timeout=600, env=clean_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (wheel,) = out.glob("dbkit-*.whl")
    (sdist,) = out.glob("dbkit-*.tar.gz")
    yield Dist(wheel, sdist)


def _version() -> str:
    import dbkit

    return dbkit.__version__


def _source_modules() -> set[str]:
    """Every module of the dbkit package in the checkout, as a path inside the wheel."""
    return {p.relative_to(REPO).as_posix() for p in (REPO / "dbkit").rglob("*.py")
            if "__pycache__" not in p.parts}


def test_wheel_carries_license_migrations_sample_and_every_module(dist: Dist):
    with zipfile.ZipFile(dist.wheel) as whl:
        names = set(whl.namelist())
        (info,) = {n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")}
        meta = Parser().parsestr(whl.read(f"{info}/METADATA").decode())
        entry_points = whl.read(f"{info}/entry_points.txt").decode()
        license_text = whl.read(f"{info}/licenses/LICENSE").decode()
    assert "MIT License" in license_text and "dbkit contributors" in license_text
    assert meta["License-Expression"] == "MIT"
    shipped_sql = {n.removeprefix("dbkit/migrations/") for n in names
                   if n.startswith("dbkit/migrations/")}
    assert shipped_sql == {p.name for p in (REPO / "migrations").glob("*.sql")}
    assert "dbkit/seed/sample.json" in names
    # found, not listed: a module or subpackage added later ships without a packaging change
    missing = _source_modules() - names
    assert not missing, f"modules not in the wheel: {sorted(missing)}"
    assert not [n for n in names if n.startswith(("tests/", "bench/", "migrations/"))]
    assert "dbkit = dbkit.cli:main" in entry_points
    assert "[pytest11]" in entry_points and "dbkit = dbkit.testdb.plugin" in entry_points
    requires = meta.get_all("Requires-Dist") or []
    # yoyo's own dependency is pinned for CI only (.ci/constraints.txt), never for users
    assert not [r for r in requires if r.lower().replace("-", "_").startswith("importlib_metadata")]
    assert meta["Requires-Python"] == ">=3.11"
    assert meta["Version"] == _version()


def test_sdist_carries_license_and_migrations_without_a_partial_test_suite(dist: Dist):
    with tarfile.open(dist.sdist) as tar:
        top = f"dbkit-{_version()}"
        names = {n.removeprefix(top + "/") for n in tar.getnames()}
    assert {"LICENSE", "README.md", "pyproject.toml", "setup.py"} <= names
    assert {f"migrations/{p.name}" for p in (REPO / "migrations").glob("*.sql")} <= names
    assert "dbkit/seed/sample.json" in names
    assert _source_modules() <= names
    assert not [n for n in names if n.startswith("tests/")]


def test_wheel_in_a_clean_venv_runs_setup_from_another_directory(dist: Dist, project: Path,
                                                                  tmp_path: Path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py, exe = venv / "bin" / "python", venv / "bin" / "dbkit"
    # the dependencies come from the package index, within CI's pins as in .ci/run
    inst = subprocess.run([str(py), "-m", "pip", "install", "-q", "-c", str(CONSTRAINTS),
                           str(dist.wheel)], capture_output=True, text=True, timeout=600,
                          env=_outside_env())
    assert inst.returncode == 0, inst.stdout[-3000:] + inst.stderr[-3000:]

    # the installed copy, not the checkout: its migrations are the ones inside the venv
    where = subprocess.run([str(py), "-c", "from dbkit.migrate.files import packaged_dir; "
                            "import dbkit; print(packaged_dir()); print(dbkit.__file__)"],
                           cwd=project, capture_output=True, text=True, timeout=60,
                           env=_outside_env())
    assert where.returncode == 0, where.stderr
    for line in where.stdout.split():
        assert Path(line).is_relative_to(venv), where.stdout

    def dbkit(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(exe), *args], cwd=project, capture_output=True, text=True,
                              timeout=300, env=_outside_env())

    # nothing configured: dbkit starts its own PostgreSQL in ./.dbkit (the project fixture
    # destroys it even if an assertion below fails)
    setup = dbkit("setup")
    assert setup.returncode == 0, setup.stdout[-2000:] + setup.stderr[-2000:]
    assert (project / ".dbkit").is_dir() and (project / ".env").is_file()
    status = dbkit("status", "--check")
    assert status.returncode == 0, status.stdout + status.stderr
    stop = dbkit("server", "stop")
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert json.loads(dbkit("server", "status", "--json").stdout)["running"] is False


def _outside_env() -> dict[str, str]:
    """A user's shell: no dbkit or libpq settings, and nothing pointing at this checkout's venv."""
    env = clean_env()
    for key in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"):
        env.pop(key, None)
    return env


def test_the_example_extra_matches_the_examples_requirements():
    """CI installs the example's dependencies through the extra; a reader installs them from
    requirements.txt: the two must say the same."""
    import tomllib

    root = Path(__file__).resolve().parent.parent
    extra = tomllib.loads((root / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["example"]
    listed = [ln.strip() for ln in (root / "examples/posts_api/requirements.txt").read_text()
              .splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert sorted(extra) == sorted(listed)
