"""The backup engine. Nothing here imports dagster: the CLI uses it directly."""
