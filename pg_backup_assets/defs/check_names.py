"""Asset check names: part of the contract (DESIGN §1), shared by assets, sensors and tests."""

DUMP_RESTORABLE = "dump_restorable"
BASE_BACKUP_VERIFIED = "base_backup_verified"
SIZE_ANOMALY = "size_anomaly"
WAL_ARCHIVE_CONTIGUOUS = "wal_archive_contiguous"
WAL_ARCHIVE_FRESH = "wal_archive_fresh"
