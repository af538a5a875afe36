"""Talking to other libraries' own environments (ms-swift lives in a virtual environment of its own)."""
