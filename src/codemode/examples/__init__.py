"""Bundled example cells (JavaScript files read with importlib.resources)."""
