"""The built wheel carries the data folders that have no __init__.py: the web page and the shipped weights.

`pip install koalarization` without them would serve no page and colorize with no default weights.
"""

import importlib.util
import shutil
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO


def can_build_offline() -> bool:
    """Without build isolation (no network), pip needs setuptools and a bdist_wheel in this environment."""
    if importlib.util.find_spec("setuptools") is None:
        return False
    return (importlib.util.find_spec("wheel") is not None
            or importlib.util.find_spec("setuptools.command.bdist_wheel") is not None)


@pytest.mark.skipif(not can_build_offline(), reason="needs setuptools and wheel installed to build offline")
def test_wheel_holds_the_web_page_and_the_shipped_weights(tmp_path):
    source = tmp_path / "src"  # a copy: building in place would leave build/ and *.egg-info in the checkout
    source.mkdir()
    for name in ("setup.py", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source)
    shutil.copytree(REPO / "koalarization", source / "koalarization",
                    ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "--no-index",
                    "--quiet", "-w", str(tmp_path / "dist"), str(source)], check=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("koalarization-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        sizes = {info.filename: info.file_size for info in archive.infolist()}
    expected = [path for folder in ("inference/web/static", "weights") for path in (REPO / "koalarization" / folder).iterdir()]
    assert {p.name for p in expected} >= {"index.html", "app.js", "colorize.weights.h5", "config.json"}
    for path in expected:
        name = path.relative_to(REPO).as_posix()
        assert sizes.get(name) == path.stat().st_size, name
