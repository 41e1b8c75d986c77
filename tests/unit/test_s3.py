"""S3 part sizing: any object S3 accepts fits its 10,000-part limit."""

from pg_backup_assets.core.storage.s3 import S3Storage, _Upload

S3_MAX_OBJECT = 5 << 40  # 5 TiB, S3's largest object
S3_MAX_PARTS = 10_000


def test_s3_part_size_doubles_so_any_object_fits_10000_parts():
    upload = _Upload(S3Storage(client=None, bucket="b", part_size=16 << 20), "k")
    sizes = []
    for parts_sent in (0, 999, 1000, 2000, 9999):
        upload.futures = [None] * parts_sent
        sizes.append(upload._part_size() >> 20)
    assert sizes == [16, 16, 32, 64, 8192]


def test_the_parts_s3_allows_hold_its_largest_object():
    upload = _Upload(S3Storage(client=None, bucket="b", part_size=16 << 20), "k")
    capacity = 0
    for parts_sent in range(S3_MAX_PARTS):
        upload.futures = [None] * parts_sent
        capacity += upload._part_size()
    assert capacity >= S3_MAX_OBJECT
