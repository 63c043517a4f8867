"""Data that ships with or is made by the package: the demo slide and synthetic slides."""
