"""Sphinx configuration of the sklearn-sela documentation.

Build with ``sphinx-build -W -b html docs docs/_build/html``; add
``-D plot_gallery=0`` to skip running the gallery examples (the tests do,
and run the examples separately with small settings).
"""

import os
import re
import sys
from datetime import date
from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.util.docutils import SphinxDirective

HERE = Path(__file__).resolve().parent
# Build from a source checkout even when the package is not installed.
sys.path.insert(0, str(HERE.parent))

import sklearn_sela  # noqa: E402

project = "sklearn-sela"
author = "sklearn-sela developers"
copyright = f"{date.today().year}, {author}"
version = release = sklearn_sela.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]

# MyST renders the Markdown benchmark fragments (docs/benchmarks_*.md) that
# other parts of the project write; without it they are shown as plain text.
try:
    import myst_parser  # noqa: F401
except ImportError:
    HAVE_MYST = False
else:
    HAVE_MYST = True
    extensions.append("myst_parser")
    myst_heading_anchors = 3
    myst_enable_extensions = ["dollarmath"]

source_suffix = {".rst": "restructuredtext"}
if HAVE_MYST:
    source_suffix[".md"] = "markdown"

root_doc = "index"
templates_path = ["_templates"]
# The fragments are pulled into benchmarks.rst, not pages of their own.
exclude_patterns = ["_build", "benchmarks_*.md", "**.ipynb_checkpoints"]
# Fragments are written by benchmark scripts: tolerate Markdown heading
# jumps and links to files outside the docs.
suppress_warnings = ["myst.header", "myst.xref_missing"]

html_theme = "alabaster"
html_static_path = []
html_theme_options = {
    "description": "SeLa self-labelling for scikit-learn",
    "fixed_sidebar": True,
}

# -- API reference ------------------------------------------------------------
autosummary_generate = True
autodoc_default_options = {"members": True, "member-order": "bysource"}
autodoc_typehints = "none"
# numpydoc lists class members itself; the autosummary templates do instead.
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# -- Gallery --------------------------------------------------------------------
sphinx_gallery_conf = {
    "examples_dirs": str(HERE.parent / "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "within_subsection_order": "FileNameSortKey",
    "download_all_examples": False,
    "show_memory": False,
    "remove_config_comments": True,
    # One example failing is a failed build, not a page with a traceback.
    "abort_on_example_error": True,
    "image_scrapers": ("matplotlib",),
    # "Examples using X" lists on the API pages (minigallery directive).
    "doc_module": ("sklearn_sela",),
    "backreferences_dir": "gen_modules/backreferences",
}
try:  # sphinx-gallery >= 0.17: no sg_execution_times.rst in the source tree
    from sphinx_gallery.gen_gallery import DEFAULT_GALLERY_CONF
except ImportError:  # pragma: no cover
    DEFAULT_GALLERY_CONF = {}
if "write_computation_times" in DEFAULT_GALLERY_CONF:
    sphinx_gallery_conf["write_computation_times"] = False
# Examples may print progress; keep matplotlib off any display.
os.environ.setdefault("MPLBACKEND", "Agg")


# -- Directives ---------------------------------------------------------------
# Preferred order of the benchmark fragments; others follow alphabetically.
BENCHMARK_ORDER = ["sinkhorn", "training", "scaling", "quality", "distributed", "gpu"]


class BenchmarkFragments(SphinxDirective):
    """Insert every ``docs/benchmarks_*.md`` fragment that exists.

    Fragments are written by the benchmark scripts, so which exist depends on
    what has been run; a missing one is skipped rather than an error.

    Each fragment gets the label ``benchmarks-<name>`` (``benchmarks_quality.md``:
    ``benchmarks-quality``) on its first heading, for ``:ref:`` links from
    the guides and the docstrings; MyST targets in a fragment, a line
    ``(label)=`` before a heading, label its sections.
    """

    has_content = False

    def run(self):
        src = Path(self.env.srcdir)
        found = {p.stem[len("benchmarks_"):]: p for p in src.glob("benchmarks_*.md")}
        names = [n for n in BENCHMARK_ORDER if n in found]
        names += sorted(n for n in found if n not in BENCHMARK_ORDER)
        if not names:
            para = nodes.paragraph(
                text="No benchmark results have been recorded in this build."
            )
            return [para]
        lines = []
        for name in names:
            path = found[name]
            self.env.note_dependency(str(path))
            lines += [f".. _benchmarks-{name}:", ""]
            if HAVE_MYST:
                lines += [f".. include:: {path.name}", "   :parser: myst_parser.sphinx_", ""]
            else:
                # Without MyST the fragment is shown as text under a heading of
                # its own, which its section labels also point to.
                text = path.read_text()
                title = next((ln.lstrip("#").strip() for ln in text.splitlines()
                              if ln.startswith("#")), path.name)
                lines += [f".. _{label}:" for label in re.findall(r"^\((\S+)\)=$", text, re.M)]
                lines += [
                    "", title, "-" * len(title), "",
                    f".. literalinclude:: {path.name}", "   :language: markdown",
                    f"   :caption: {path.name}", "",
                ]
        self.state_machine.insert_input(lines, self.state_machine.input_lines.source(0))
        return []


class SelaHelp(SphinxDirective):
    """Literal block with the ``--help`` text of ``sela`` or a sub-command.

    Generated from the parser itself, so the page cannot drift from the
    installed command.
    """

    required_arguments = 0
    optional_arguments = 1
    option_spec = {"width": directives.positive_int}

    def run(self):
        from sklearn_sela.cli import build_parser

        width = self.options.get("width", 79)
        old = os.environ.get("COLUMNS")
        os.environ["COLUMNS"] = str(width)  # argparse wraps to this
        try:
            parser = build_parser()
            if self.arguments:
                sub = next(
                    a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"
                )
                parser = sub.choices[self.arguments[0]]
            text = parser.format_help()
        finally:
            if old is None:
                del os.environ["COLUMNS"]
            else:
                os.environ["COLUMNS"] = old
        block = nodes.literal_block(text, text)
        block["language"] = "text"
        return [block]


def _skip_member(app, what, name, obj, skip, options):
    # scikit-learn generates set_{fit,score,...}_request methods for metadata
    # routing on estimators whose methods take extra arguments; they are
    # documented by scikit-learn, and their docstrings link to its glossary.
    if re.fullmatch(r"set_\w+_request", name):
        return True
    return None


def setup(app):
    app.connect("autodoc-skip-member", _skip_member)
    app.add_directive("sela-benchmark-fragments", BenchmarkFragments)
    app.add_directive("sela-help", SelaHelp)
    return {"parallel_read_safe": True}
