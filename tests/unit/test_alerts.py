"""Alert messages and their delivery to a real webhook on loopback."""

from __future__ import annotations

import pytest

from pg_backup_assets.core.alerts import Alert, deliver, muted
from tests.conftest import Webhook

GAP = Alert.new(
    "check_failed",
    "ERROR",
    "1 segments missing: 000000010000000000000007",
    source="42",
    cluster="main",
    asset="main/wal_archive",
    check="wal_archive_contiguous",
    url="http://dagster:3000/assets/main/wal_archive?view=checks",
)


@pytest.fixture
def hook():
    h = Webhook()
    yield h
    h.close()


def test_json_payload_names_what_broke():
    body = GAP.payload("json")
    assert body["event"] == "check_failed" and body["severity"] == "ERROR"
    assert (body["cluster"], body["asset"], body["check"]) == (
        "main",
        "main/wal_archive",
        "wal_archive_contiguous",
    )
    assert "000000010000000000000007" in body["description"]
    assert body["url"].endswith("?view=checks") and body["id"] and body["time"]
    assert Alert.from_dict(body) == GAP  # the outbox round trip


def test_slack_payload_is_one_text():
    body = GAP.payload("slack")
    assert list(body) == ["text"]
    assert "main/wal_archive:wal_archive_contiguous" in body["text"]
    assert (
        "<http://dagster:3000/assets/main/wal_archive?view=checks|open in Dagster>" in body["text"]
    )


def test_the_same_event_has_the_same_id_and_another_event_another():
    again = Alert.new("check_failed", "ERROR", "x", source="42")
    assert again.id == GAP.id
    assert Alert.new("check_recovered", "INFO", "x", source="42").id != GAP.id


def test_mute_patterns_match_the_subject():
    assert muted(GAP, ["*:wal_archive_contiguous"])
    assert muted(GAP, ["main/*"])
    assert not muted(GAP, ["*:size_anomaly", "other/*"])


def test_delivery_in_order_and_stops_at_the_first_refusal(hook):
    assert deliver(hook.url, "json", [GAP, GAP]) == (2, None)
    assert [b["id"] for b in hook.bodies] == [GAP.id, GAP.id]
    hook.status = 500
    sent, error = deliver(hook.url, "json", [GAP, GAP])
    assert sent == 0 and "HTTP 500" in error
    assert "s3cr3t" not in error  # the URL's token never reaches a log line


def test_an_unreachable_webhook_is_named_by_host_only(hook):
    url = hook.url
    hook.close()
    sent, error = deliver(url, "slack", [GAP])
    assert sent == 0 and "127.0.0.1" in error and "s3cr3t" not in error
