"""Offsite copies (copy 3 of 3-2-1): the store, verified copies, and the rule itself."""
