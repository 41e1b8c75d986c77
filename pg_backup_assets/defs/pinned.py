"""Which backup set a step works on: the one its own run made.

A day's partition can hold several sets (a second daily run, a base backup the WAL sensor
asked for). Picking "the newest of the day" at each step lets a concurrent run swap the
set between the backup, its offsite copy and their checks, so a check would judge a copy
nobody made yet. Each step instead follows the ``catalog_key`` its upstream step recorded
in this run (or in the run it re-executes); only a step run on its own falls back to the
newest set of the day.
"""

import dagster as dg

CATALOG_KEY = "catalog_key"

_Context = dg.AssetExecutionContext | dg.AssetCheckExecutionContext


def pinned_catalog_key(context: _Context, asset: dg.AssetKey) -> str | None:
    """The ``catalog_key`` that ``asset`` recorded for this partition in this run or the
    runs it re-executes, newest first; None when none of them materialized it."""
    instance, run = context.instance, context.run
    partition = context.partition_key
    while run is not None:
        events = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
        for entry in reversed(events):
            m = entry.asset_materialization
            if m is None or m.asset_key != asset or m.partition != partition:
                continue
            value = m.metadata.get(CATALOG_KEY)
            if value is not None:
                return str(value.value)
        run = instance.get_run_by_id(run.parent_run_id) if run.parent_run_id else None
    return None
