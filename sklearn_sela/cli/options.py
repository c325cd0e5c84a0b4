"""Command-line options for the estimator's parameters, derived from the estimator.

:class:`~sklearn_sela.SelfLabelClusterer` declares each parameter once: its
default in the signature of ``__init__``, the values it takes in
``_parameter_constraints`` (scikit-learn's parameter validation) and what it
means in the "Parameters" section of its docstring. The command line reads
that declaration instead of restating it:

* option: ``--`` and the parameter's name with ``-`` for ``_``
  (``n_clusters``: ``--n-clusters``);
* help: the first sentence of the parameter's entry in the docstring and the
  estimator's default, written as it would be typed;
* value: the text is turned into what the constraints allow -- a number
  (``Interval``), a word (``StrOptions``; ``none`` for None), one or more
  comma-separated numbers for a list or tuple (``--lr-drops 0.5,0.75``,
  ``--n-clusters 10,20``), or the text itself for ``str``;
* validation: the estimator's own (``_validate_params``), run on each value as
  it is parsed, so that a bad value is a usage error naming its option. Where
  a parameter takes a number or a sequence of numbers (``n_clusters``,
  ``image_size``), each number must be a valid value on its own.

An option that is not given is not passed: the estimator's default applies.
"""

# Authors: sklearn-sela developers
# License: BSD 3 clause

import argparse
import inspect
import os
import re
import textwrap
from numbers import Integral, Real

# Parameters without an option, and why.
EXCLUDED = {
    # Python objects (skorch callbacks); the command adds its own progress bar.
    "callbacks": "Python objects",
    # The command shows its own progress (silenced by -q).
    "verbose": "-q / the command's progress bars",
    # Managed by --checkpoint, --checkpoint-dir and --resume, under --out.
    "checkpoint_dir": "--checkpoint, --checkpoint-dir, --resume",
}

_BOOLEANS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}

# Words after which a full stop does not end a sentence.
_ABBREVIATIONS = ("e.g", "i.e", "cf", "vs", "etc", "al", "approx", "resp")


# ---------------------------------------------------------------------------
# The estimator's declaration
# ---------------------------------------------------------------------------


def _plain_text(rst):
    """Docstring text without reStructuredText markup."""
    rst = re.sub(r":\w+:`~?([^`<]*?)\s*<[^`]*>`", r"\1", rst)          # :ref:`text <t>`
    rst = re.sub(r":\w+:`~([^`]*)`", lambda m: m.group(1).rsplit(".", 1)[-1], rst)
    rst = re.sub(r":\w+:`([^`]*)`", r"\1", rst)
    return rst.replace("``", "").replace("`", "")


def first_sentence(text):
    """The first sentence of ``text`` (docstring markup removed)."""
    text = " ".join(_plain_text(text).split())
    for match in re.finditer(r"[.!?](?=\s|$)", text):
        words = text[:match.start()].split()
        if words and words[-1].lower().lstrip("(") in _ABBREVIATIONS:
            continue
        return text[:match.end()]
    return text


def parameter_docs(cls):
    """``{name: (type, description)}`` from the numpydoc "Parameters"
    section of the docstring of ``cls``."""
    lines = (inspect.getdoc(cls) or "").splitlines()
    docs, name, section = {}, None, None
    for i, line in enumerate(lines):
        following = lines[i + 1].strip() if i + 1 < len(lines) else ""
        if line.strip() and following and set(following) == {"-"}:
            section, name = line.strip(), None  # a section heading
            continue
        if section != "Parameters" or (line.strip() and set(line.strip()) == {"-"}):
            continue
        entry = re.match(r"(\w+)\s*:\s*(.*)$", line)
        if entry and not line[0].isspace():
            name = entry.group(1)
            docs[name] = (entry.group(2), [])
        elif name is not None and line.strip():
            docs[name][1].append(line.strip())
    return {n: (kind, " ".join(desc)) for n, (kind, desc) in docs.items()}


def estimator_parameters(cls):
    """``{name: default}`` of the parameters of ``cls`` that have an option,
    in the order of its signature."""
    signature = inspect.signature(cls.__init__)
    return {
        name: p.default for name, p in signature.parameters.items()
        if name != "self" and name not in EXCLUDED
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


# ---------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------


class ValueKind:
    """What a parameter's value can be on a command line, from its constraints."""

    def __init__(self):
        self.words = {}        # a word -> its value ("auto": "auto", "none": None)
        self.numbers = []      # int and/or float: a single number
        self.sequence = None   # list or tuple: comma-separated numbers
        self.element = None    # int or float: the type of the sequence's numbers
        self.text = False      # any text (a str parameter)
        self.boolean = False

    def add(self, constraint):
        """Take in one of scikit-learn's parameter constraints."""
        c = constraint
        if c is None:
            self.words.setdefault("none", None)
        elif isinstance(c, str):  # scikit-learn's named constraints
            if c == "boolean":
                self.boolean = True
            elif c in ("random_state", "verbose"):
                self._number(int)
                if c == "random_state":
                    self.words.setdefault("none", None)
        elif c in (list, tuple):
            self.sequence = self.sequence or c
        elif c is str or c is os.PathLike:
            self.text = True
        elif c is bool:
            self.boolean = True
        elif isinstance(getattr(c, "options", None), (set, frozenset)):  # StrOptions
            self.words.update({w: w for w in sorted(c.options) if isinstance(w, str)})
        elif isinstance(getattr(c, "type", None), type) and hasattr(c, "left"):  # Interval
            self._number(int if issubclass(c.type, Integral) else float)
        elif c in (Integral, int) or c in (Real, float):
            self._number(int if c in (Integral, int) else float)
        # Anything else (callables, modules, arrays) cannot be typed in a shell.

    def _number(self, kind):
        if kind not in self.numbers:
            self.numbers.append(kind)

    def from_default(self, default):
        """Without constraints: what the default's type suggests."""
        if default is None:
            self.words["none"] = None
            self.text = True
        elif isinstance(default, bool):
            self.boolean = True
        elif isinstance(default, (Integral, Real)):
            self._number(int if isinstance(default, Integral) else float)
        elif isinstance(default, (list, tuple)):
            self.sequence = type(default)
        else:
            self.text = True

    def finish(self, default, type_line):
        """Settle the sequence's container and element type."""
        if self.sequence is None:
            return
        if isinstance(default, (list, tuple)):
            self.sequence = type(default)
        stated = re.search(r"\bof (int|float)\b|\((int|float),", type_line)
        if self.numbers:
            self.element = self.numbers[0]  # a single number or several
        elif stated:
            self.element = int if "int" in stated.group(0) else float
        elif isinstance(default, (list, tuple)) and default:
            self.element = float if any(isinstance(v, float) for v in default) else int
        else:
            self.element = float

    def metavar(self):
        names = {int: "INT", float: "FLOAT"}
        parts = []
        if self.sequence is not None:
            parts.append(names[self.element] + ",...")
        elif self.numbers:
            parts.append("NUMBER" if len(self.numbers) > 1 else names[self.numbers[0]])
        if self.text:
            parts.append("TEXT")
        if self.boolean:
            parts.append("true|false")
        parts += [w for w in self.words if w != "none"] + ["none"] * ("none" in self.words)
        return "|".join(parts) or "VALUE"

    def describe(self):
        names = {int: "an integer", float: "a number"}
        parts = [names[k] for k in self.numbers]
        if self.sequence is not None:
            parts.append("comma-separated " + ("integers" if self.element is int else "numbers"))
        if self.boolean:
            parts.append("true or false")
        parts += [repr(w) for w in self.words]
        return ", ".join(parts[:-1]) + " or " + parts[-1] if len(parts) > 1 else parts[0]

    def parse(self, text):
        """The value ``text`` stands for; ValueError if none."""
        if text in self.words:
            return self.words[text]
        if self.boolean and text.lower() in _BOOLEANS:
            return _BOOLEANS[text.lower()]
        number = _number(text, self.numbers) if "," not in text else None
        if number is not None:
            return number
        if self.sequence is not None:
            items = [_number(item.strip(), [self.element]) for item in text.split(",")]
            if None not in items:
                return self.sequence(items)
        if self.text:
            return text
        raise ValueError(f"expected {self.describe()}, got {text!r}")


def _number(text, kinds):
    for kind in kinds:
        try:
            return kind(text)
        except ValueError:
            pass
    return None


def value_kind(cls, name, default, type_line=""):
    """The :class:`ValueKind` of parameter ``name`` of ``cls``."""
    kind = ValueKind()
    constraints = getattr(cls, "_parameter_constraints", {}).get(name)
    if constraints is None:
        kind.from_default(default)
    for constraint in constraints or ():
        kind.add(constraint)
    if not (kind.words or kind.numbers or kind.sequence or kind.text or kind.boolean):
        kind.from_default(default)  # only constraints a shell cannot express
    kind.finish(default, type_line)
    return kind


def format_value(value):
    """``value`` as it is typed on the command line."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(format_value(v) for v in value)
    return str(value)


def _validate(cls, name, value, kind):
    """The estimator's own validation of one value (and of each number in a
    sequence, where a single number is allowed too)."""
    check = getattr(cls, "_validate_params", None)
    if check is None:
        return
    values = [value]
    if kind.numbers and isinstance(value, (list, tuple)):
        values += list(value)
    for v in values:
        try:
            cls(**{name: v})._validate_params()
        except (ValueError, TypeError) as exc:
            raise argparse.ArgumentTypeError(" ".join(str(exc).split())) from None


def value_parser(cls, name, kind):
    """An argparse ``type``: the text of option ``--name`` as a checked value."""

    def parse(text):
        try:
            value = kind.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        _validate(cls, name, value, kind)
        return value

    parse.__name__ = name
    return parse


# ---------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------


def option_name(name):
    return "--" + name.replace("_", "-")


def add_estimator_options(parser, cls, *, names=None, defaults=None, unset=None):
    """Add an option to ``parser`` for each parameter of ``cls`` (only those in
    ``names`` when given).

    ``defaults`` maps a parameter to the command's own default for it (the
    demo's seed); without one, an option not given is not passed, and its
    help shows ``unset`` (e.g. "the model's") or else the estimator's default.
    The parameters' values are gathered by :func:`given_params`.
    """
    defaults = defaults or {}
    docs = parameter_docs(cls)
    group = parser.add_argument_group(f"{cls.__name__} parameters", textwrap.fill(
        f"Those of {cls.__name__} (see its documentation). INT,... and "
        "FLOAT,... take one value or several separated by commas; none "
        "stands for None.", width=75))
    added = []
    for name, default in estimator_parameters(cls).items():
        if names is not None and name not in names:
            continue
        type_line, description = docs.get(name, ("", ""))
        kind = value_kind(cls, name, default, type_line)
        shown = format_value(defaults[name]) if name in defaults else (
            unset or format_value(default))
        sentence = first_sentence(description) if description else name.replace("_", " ")
        group.add_argument(
            option_name(name), dest=name, type=value_parser(cls, name, kind),
            default=defaults.get(name, argparse.SUPPRESS), metavar=kind.metavar(),
            help=f"{sentence} (default: {shown})".replace("%", "%%"),
        )
        added.append(name)
    parser.set_defaults(estimator_params=tuple(added))
    return added


def given_params(args):
    """``{name: value}`` of the estimator parameters set on the command line
    (or by the command's own defaults)."""
    names = getattr(args, "estimator_params", ())
    return {name: getattr(args, name) for name in names if hasattr(args, name)}


def option_of(message, names):
    """The option of the estimator parameter an error message is about, or
    None: ``projection must be ...`` or ``The 'lr' parameter ...``."""
    match = re.match(r"(?:The ')?(\w+)'?", message)
    if match and match.group(1) in names:
        return option_name(match.group(1))
    return None
