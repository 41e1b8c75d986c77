"""WAL: file names and gap math, the archive (wal-push/wal-fetch), and its status."""
