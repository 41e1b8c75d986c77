"""Physical base backups: taking them, restoring them to a point in time, verifying them."""
