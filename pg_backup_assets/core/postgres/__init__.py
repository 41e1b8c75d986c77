"""Talking to PostgreSQL: libpq DSNs and server facts, the client tools, local servers."""
