"""The scenario suite over every kind of session (see conftest.py)."""
