"""Figures written as files: :func:`save_figure`, the one PNG writer of the package's
plots (the cohort's Kaplan-Meier plot, the cross-validation report's plots).

matplotlib is imported by the function, so importing this module costs nothing.
"""

from __future__ import annotations

from pathlib import Path

from napari_ghanet.io.atomic import atomic_path

__all__ = ["save_figure"]


def save_figure(fig, path: str | Path) -> Path:
    """Lay out ``fig``, write it as a PNG atomically (120 dpi) and close it.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        The figure; closed afterwards, written or not.
    path : str or Path
        The PNG file.

    Returns
    -------
    Path
        ``path``.

    Examples
    --------
    >>> import tempfile, pathlib, matplotlib
    >>> matplotlib.use("Agg")
    >>> import matplotlib.pyplot as plt
    >>> fig, ax = plt.subplots()
    >>> _ = ax.plot([0, 1], [1, 0])
    >>> out = save_figure(fig, pathlib.Path(tempfile.mkdtemp()) / "line.png")
    >>> out.read_bytes()[:4] == b"\\x89PNG"
    True
    """
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        fig.tight_layout()
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=120)
    finally:
        plt.close(fig)
    return path
