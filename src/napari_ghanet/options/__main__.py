"""``python -m napari_ghanet.options [--check] [PAGE]``: regenerate (or check) the option
tables of ``docs/options.md`` from the declarations (:func:`~napari_ghanet.options.cli.main`)."""

import sys

from napari_ghanet.options.cli import main

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
