"""The documentation builds without warnings, and its code runs.

* The Sphinx build (``-W``: any warning fails) runs on a copy of ``docs/``
  and ``examples/`` in a temporary folder, so nothing is written into the
  source tree, with ``plot_gallery=0`` (the gallery pages are generated but
  the examples are not executed there). Skipped without Sphinx, numpydoc,
  sphinx-gallery and matplotlib (the ``docs`` extra).
* The gallery examples run here, with ``SELA_EXAMPLES_QUICK=1`` (tiny
  settings; a few seconds each).
* The Python code blocks of the user guide run with fewer epochs.
* Every public name of the package appears in the API reference.
"""

import importlib
import os
import re
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sklearn.datasets

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXAMPLES = sorted((ROOT / "examples").glob("plot_*.py"))

# Modules documented in docs/api.rst, each with an __all__.
API_MODULES = [
    "sklearn_sela",
    "sklearn_sela.sinkhorn",
    "sklearn_sela.partition",
    "sklearn_sela.assigner",
    "sklearn_sela.spectral",
    "sklearn_sela.neighbors",
    "sklearn_sela.training",
    "sklearn_sela.callbacks",
    "sklearn_sela.data",
    "sklearn_sela.data.base",
    "sklearn_sela.data.inputs",
    "sklearn_sela.data.streaming",
    "sklearn_sela.data.augment",
    "sklearn_sela.data.presets",
    "sklearn_sela.data.image_files",
    "sklearn_sela.backbones",
    "sklearn_sela.metrics",
    "sklearn_sela.plotting",
    "sklearn_sela.persistence",
    "sklearn_sela.cli",
    "sklearn_sela.datasets",
    "sklearn_sela.distributed",
    "sklearn_sela.collectives",
]




def test_api_reference_lists_every_public_name():
    api = (DOCS / "api.rst").read_text()
    listed = set(re.findall(r"^   ([A-Za-z_][\w]*)$", api, flags=re.M))
    missing = []
    for name in API_MODULES:
        module = importlib.import_module(name)
        for obj in getattr(module, "__all__", []):
            # Constants (UPPER_CASE) are described in prose.
            if not obj.isupper() and obj not in listed:
                missing.append(f"{name}.{obj}")
    assert not missing, f"add to docs/api.rst: {missing}"


# A made-up benchmark fragment added to the copy of docs/ built below: it
# must appear on the benchmarks page (MyST tables, heading jumps and links to
# scripts outside docs/ included), next to the real fragments.
SELFTEST_FRAGMENT = """# Zeta selftest results

| size | seconds |
| --- | --- |
| 10 | 0.125 |

### Notes

Made by [the script](../benchmarks/bench_zeta.py).
"""


def test_sphinx_build_has_no_warnings(tmp_path):
    for mod in ("sphinx", "numpydoc", "sphinx_gallery", "matplotlib"):
        pytest.importorskip(mod)
    src = tmp_path / "docs"
    ignore = shutil.ignore_patterns("_build", "gen_modules", "auto_examples",
                                    "sg_execution_times.rst", "__pycache__")
    shutil.copytree(DOCS, src, ignore=ignore)
    shutil.copytree(ROOT / "examples", tmp_path / "examples", ignore=ignore)
    (src / "benchmarks_zzz_selftest.md").write_text(SELFTEST_FRAGMENT)
    env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
           "-D", "plot_gallery=0", "-d", str(tmp_path / "doctrees"), str(src),
           str(tmp_path / "html")]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-8000:]
    html = tmp_path / "html"
    for page in ("index", "user_guide", "cli", "api", "benchmarks", "auto_examples/index"):
        assert (html / f"{page}.html").exists(), page
    assert (html / "gen_modules" / "sklearn_sela.SelfLabelClusterer.html").exists()
    cli_page = (html / "cli.html").read_text()
    assert "--checkpoint-dir" in cli_page  # the generated --help text
    bench = (html / "benchmarks.html").read_text()
    if _have("myst_parser"):
        assert "Zeta selftest results" in bench and "0.125" in bench
    else:
        assert "benchmarks_zzz_selftest.md" in bench  # shown as plain text
    for fragment in sorted(src.glob("benchmarks_*.md")):
        text = fragment.read_text()
        first = next((ln for ln in text.splitlines() if ln.strip()), "")
        if first.startswith("#") and _have("myst_parser"):
            assert first.lstrip("#").strip().split()[0] in bench, fragment.name
        # Labels for :ref: links (docs/conf.py, BenchmarkFragments): one per
        # fragment, and its MyST targets "(label)=".
        name = fragment.stem[len("benchmarks_"):]
        for label in [f"benchmarks-{name}"] + re.findall(r"^\((\S+)\)=$", text, re.M):
            anchor = re.sub(r"[^a-z0-9]+", "-", label.lower())
            assert f'id="{anchor}"' in bench, (fragment.name, label)


def _have(module):
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs_quickly(path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    monkeypatch.setenv("SELA_EXAMPLES_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        runpy.run_path(str(path), run_name="__main__")
    finally:
        plt.close("all")
    text = path.read_text()
    assert text.startswith('"""\n'), "gallery examples start with a title docstring"
    assert "SELA_EXAMPLES_QUICK" in text


def test_examples_cover_the_gallery_topics():
    names = {p.stem for p in EXAMPLES}
    assert {"plot_digits_clustering", "plot_grid_search", "plot_assigner_vs_kmeans",
            "plot_transform_features", "plot_label_transfer", "plot_feature_pipeline"} <= names


def _rst_python_blocks(path):
    blocks, current = [], None
    for line in path.read_text().splitlines():
        if current is not None:
            if line.strip() and not line.startswith("   "):
                blocks.append("\n".join(current))
                current = None
            else:
                current.append(line[3:])
                continue
        if line.strip() == ".. code-block:: python":
            current = []
    if current is not None:
        blocks.append("\n".join(current))
    return blocks


USER_GUIDE_BLOCKS = _rst_python_blocks(DOCS / "user_guide.rst")


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("index", range(len(USER_GUIDE_BLOCKS)))
def test_user_guide_code_runs(index, monkeypatch, capsys):
    real = sklearn.datasets.load_digits

    def load_digits(*args, **kwargs):
        X, y = real(return_X_y=True)
        return X[:1300], y[:1300]  # the label-transfer block slices at 1200

    monkeypatch.setattr(sklearn.datasets, "load_digits", load_digits)
    code = re.sub(r"max_epochs=\d+", "max_epochs=1", USER_GUIDE_BLOCKS[index])
    code = re.sub(r"max_iter=\d+", "max_iter=20", code)
    exec(compile(code, f"user_guide.rst block {index}", "exec"), {"__name__": "__guide__"})
    assert capsys.readouterr().out


@pytest.mark.parametrize("module", ["sklearn_sela.metrics", "sklearn_sela.plotting",
                                    "sklearn_sela.partition",
                                    "sklearn_sela.persistence", "sklearn_sela.cli"])
def test_docstring_examples(module, tmp_path, monkeypatch):
    """The Examples sections of the docstrings of these modules run as shown."""
    import doctest

    monkeypatch.chdir(tmp_path)
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
