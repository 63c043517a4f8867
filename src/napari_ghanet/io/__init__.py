"""Slide I/O: the slide reader and its backends, patch-feature files, atomic writes."""
