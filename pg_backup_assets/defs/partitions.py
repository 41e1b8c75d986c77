import warnings
from collections.abc import Callable

import dagster as dg

# A day's partition exists once the day is over: the nightly run backs up "yesterday".
daily = dg.DailyPartitionsDefinition(start_date="2026-01-01")


def daily_check(
    fn: Callable[..., dg.AssetCheckResult], **kwargs: object
) -> dg.AssetChecksDefinition:
    """An asset check partitioned like the daily asset it guards (it must know the day).

    Partitioned checks are a preview feature in Dagster 1.13; its warning is expected.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.asset_check(partitions_def=daily, **kwargs)(fn)
