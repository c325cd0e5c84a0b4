"""``python -m sklearn_sela``: the ``sela`` command (see :mod:`sklearn_sela.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
