"""Logical dumps: taking them, proving them readable, restoring them."""
