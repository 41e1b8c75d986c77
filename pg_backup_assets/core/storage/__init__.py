"""Where objects live: storage backends (local, S3), the streaming codec and the repository."""
