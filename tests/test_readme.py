"""Keep README.md true: run its Python blocks, check its commands and links.

The Python blocks run with fewer epochs (``max_epochs=N`` becomes
``max_epochs=1``) and on a subset of the digits, so the test is quick; the
image-folder block gets a small ``my_images/`` folder. Shell commands are
parsed by the real ``sela`` argument parser (options and values must exist)
without running the long ones; ``sela demo --quick`` and the entry points
run in tests/test_cli.py, and the set-up commands are what CI runs.
"""

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import sklearn.datasets
from PIL import Image

from sklearn_sela.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _blocks(language):
    text = README.read_text()
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def _shrink(code):
    return re.sub(r"max_epochs=\d+", "max_epochs=1", code)




@pytest.fixture
def small_digits(monkeypatch):
    real = sklearn.datasets.load_digits

    def load_digits(*args, **kwargs):
        out = real(*args, **kwargs)
        if isinstance(out, tuple):
            return tuple(a[:240] for a in out)
        for key in ("data", "images", "target"):
            out[key] = out[key][:240]
        return out

    monkeypatch.setattr(sklearn.datasets, "load_digits", load_digits)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A current folder with ``my_images/`` as the README's folder examples expect."""
    rng = np.random.default_rng(0)
    for i in range(12):
        sub = tmp_path / "my_images" / f"group{i % 2}"
        sub.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 255, size=(24, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(sub / f"photo{i}.png")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_readme_has_the_required_sections():
    text = README.read_text()
    for heading in ("## Set up", "## Quick start", "## Your own images", "## Documentation"):
        assert heading in text
    bash = "\n".join(_blocks("bash"))
    assert 'pip install -e ".[test]" && pytest' in bash.splitlines()
    assert "pip install -e . && sela demo" in bash.splitlines()


def test_quick_start_is_short_and_uses_the_api():
    quick = _blocks("python")[0]
    lines = [line for line in quick.splitlines() if line.strip()]
    assert len(lines) <= 12
    for needle in ("SelfLabelClusterer(", ".fit(X)", "labels_", "transform(", "GridSearchCV",
                   "n_clusters", "n_heads"):
        assert needle in quick


@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_python_block_runs(index, small_digits, workdir, capsys):
    code = _shrink(_blocks("python")[index])
    exec(compile(code, f"README.md python block {index}", "exec"), {"__name__": "__readme__"})
    assert capsys.readouterr().out  # every block prints something


def _commands():
    for block in _blocks("bash"):
        for line in block.splitlines():
            line = line.split("#")[0].strip()
            for part in filter(None, (p.strip() for p in line.split("&&"))):
                yield part


def test_shell_commands_parse():
    commands = list(_commands())
    sela = [c for c in commands if c.startswith("sela ")]
    assert {c.split()[1] for c in sela} >= {"demo", "fit", "predict", "transform"}
    for command in commands:
        argv = shlex.split(command)
        if argv[0] == "sela":
            # Raises SystemExit (status 2) on an unknown option or bad value.
            args = build_parser().parse_args(argv[1:])
            assert callable(args.func)
        elif argv[:3] == ["pip", "install", "-e"]:
            assert argv[3] in (".", ".[test]"), command
        else:
            assert argv[0] == "pytest" and len(argv) == 1, command


def test_links_point_to_existing_files():
    text = README.read_text()
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if not re.match(r"[a-z]+://", t)]
    assert local, "the README links to the docs pages"
    for target in local:
        assert (ROOT / target).exists(), target
    for page in ("docs/user_guide.rst", "docs/api.rst", "docs/cli.rst", "docs/benchmarks.rst"):
        assert page in local
