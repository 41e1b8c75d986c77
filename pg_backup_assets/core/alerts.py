"""Alerts that reach people: what a message says, and delivering it to a webhook.

Deciding *when* to alert (a check turning red, a run failing, a backup going stale) is
the Dagster layer's (defs/alerts); this module formats and delivers, with no Dagster.
The webhook URL is a secret (Slack's carry their token): it never appears in a message,
a log line or an error; only its host does.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import hashlib
import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlparse

EVENTS = {
    "check_failed": "failed",
    "check_recovered": "passes again",
    "run_failed": "run failed",
    "asset_stale": "is stale",
    "asset_fresh": "is fresh again",
}


@dataclass(frozen=True)
class Alert:
    event: str  # one of EVENTS
    severity: str  # ERROR / WARN for a problem, INFO for a recovery
    description: str
    cluster: str | None = None
    asset: str | None = None  # "main/base_backup"
    check: str | None = None
    partition: str | None = None
    job: str | None = None
    run_id: str | None = None
    url: str | None = None
    time: str = ""
    id: str = ""  # stable: a receiver may drop a message it has seen (a retried delivery)

    @classmethod
    def new(cls, event: str, severity: str, description: str, source: str, **fields: Any) -> Alert:
        """``source``: what makes this alert unique (an execution or run id)."""
        digest = hashlib.sha256(f"{event}|{source}".encode()).hexdigest()[:16]
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        return cls(event, severity, description[:2000], time=now, id=digest, **fields)

    @property
    def subject(self) -> str:
        """What the alert is about: "main/wal_archive:wal_archive_contiguous", a job, an asset."""
        if self.check:
            return f"{self.asset}:{self.check}"
        return self.asset or self.job or "pg-backup-assets"

    def summary(self) -> str:
        where = f" [{self.partition}]" if self.partition else ""
        return f"{self.severity} {self.subject}{where} {EVENTS[self.event]}: {self.description}"

    def payload(self, fmt: str) -> dict[str, Any]:
        if fmt == "slack":
            icon = ":white_check_mark:" if self.severity == "INFO" else ":red_circle:"
            link = f" <{self.url}|open in Dagster>" if self.url else ""
            return {"text": f"{icon} pg-backup-assets: {self.summary()}{link}"}
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Alert:
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__})


def muted(alert: Alert, patterns: Sequence[str]) -> bool:
    """``alerts.mute`` patterns match the subject, e.g. "main/logical_dump:size_anomaly",
    "*:three_two_one", "main/*", or a job name."""
    return any(fnmatch.fnmatchcase(alert.subject, p) for p in patterns)


class DeliveryError(Exception):
    """The webhook did not take a message; the message says why, without the URL."""


def post(url: str, payload: dict[str, Any], timeout_s: float = 10) -> None:
    host = urlparse(url).hostname or "the webhook"
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json", "User-Agent": "pg-backup-assets"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        raise DeliveryError(f"{host} answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DeliveryError(f"cannot reach {host}: {reason}") from None


def deliver(url: str, fmt: str, alerts: Sequence[Alert]) -> tuple[int, str | None]:
    """Post alerts in order; stop at the first failure so that order and retries hold.

    Returns (how many were delivered, why the next one was not).
    """
    for n, alert in enumerate(alerts):
        try:
            post(url, alert.payload(fmt))
        except DeliveryError as exc:
            return n, str(exc)
    return len(alerts), None
