"""A pandas DataFrame as a table in Dagster metadata (the UI renders it)."""

import dagster as dg
import pandas as pd

_TYPES = {"int64": "int", "Int64": "int", "float64": "float", "bool": "bool", "boolean": "bool"}


def table_metadata(df: pd.DataFrame) -> dg.TableMetadataValue:
    """Every record has every column (Dagster's rule); what a row lacks is None."""
    schema = dg.TableSchema(
        columns=[
            dg.TableColumn(name, _TYPES.get(str(t), "string")) for name, t in df.dtypes.items()
        ]
    )
    records = [
        dg.TableRecord({k: (None if pd.isna(v) else v) for k, v in row.items()})
        for row in df.astype(object).to_dict("records")
    ]
    return dg.MetadataValue.table(records, schema)
