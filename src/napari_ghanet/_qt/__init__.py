"""Qt widgets of the dock (the only package besides _reader/_sample_data that imports Qt)."""
