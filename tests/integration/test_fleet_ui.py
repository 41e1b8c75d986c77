"""What an operator sees in the Dagster UI, in a real browser: Debian's headless Chromium,
driven by Playwright, over ``dagster-webserver`` on the fleet's PostgreSQL-backed instance
(two clusters backed up by the daemon; ``three_two_one`` red because the S3 endpoint is on
this machine). Assertions are on what the page shows; every page is kept as a screenshot
in tests/artifacts/ (``make screenshots`` copies two of them into docs/ for the README).
"""

from __future__ import annotations

import shutil
import tempfile
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.integration.conftest import Fleet

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; Playwright never downloads one
ARTIFACTS = REPO_ROOT / "tests" / "artifacts"
# Root needs --no-sandbox; the rest keep a browser on a machine without network from
# hammering refused connections (updates, sync, QUIC, first-run pages).
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
WAIT_MS = 60_000  # a React app under a loaded machine: wait for content, never a fixed time

# One test process builds this file's shared fixture (`make test` runs two).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("fleet")]


@pytest.fixture(scope="module")
def browser() -> Iterator:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: `make test` installs Debian's chromium when run as root; "
            "otherwise apt-get install chromium"
        )
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    profile = tempfile.mkdtemp(prefix="pgba-chromium-")  # a fresh --user-data-dir
    try:
        with sync_playwright() as p:
            context = p.chromium.launch_persistent_context(
                profile,
                executable_path=str(CHROMIUM),
                headless=True,
                args=FLAGS,
                viewport={"width": 1400, "height": 1000},
            )
            context.set_default_timeout(WAIT_MS)
            yield context
            context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def page(browser, fleet: Fleet):  # noqa: ANN001, ANN201
    page = browser.new_page()
    page.base = fleet.ui_url
    yield page
    page.close()


def shot(page, name: str) -> Path:  # noqa: ANN001
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def graph(page, selection: str) -> None:  # noqa: ANN001
    """The global asset graph filtered by an asset selection, as typed into its search box."""
    page.goto(f"{page.base}/asset-groups~{urllib.parse.quote(selection, safe='')}/")


def shown(page, name: str):  # noqa: ANN001, ANN201
    return page.get_by_text(name, exact=True)


def test_the_graph_shows_one_group_per_cluster_and_the_lineage(page, fleet):
    from playwright.sync_api import expect

    page.goto(page.base + "/asset-groups")
    for group in ("app_eu", "crm"):
        expect(shown(page, group).first).to_be_visible()
    shot(page, "ui-fleet")

    # The UI computes lineage; each upstream selection shows exactly what feeds the asset.
    lineage = {
        "offsite_dump": ({"logical_dump"}, {"base_backup", "wal_archive"}),
        "offsite_base_backup": ({"base_backup"}, {"logical_dump", "wal_archive"}),
        "offsite_wal": ({"wal_archive"}, {"base_backup", "logical_dump"}),
    }
    for asset, (upstream, unrelated) in lineage.items():
        graph(page, f'+key:"crm/{asset}"')
        for name in {asset, *upstream}:
            expect(shown(page, name).first).to_be_visible()
        expect(page.get_by_text("Latest event").first).to_be_visible()  # the graph is drawn
        for name in unrelated:
            expect(shown(page, name)).to_have_count(0)
        shot(page, f"ui-lineage-{asset}")

    # Downstream of the base backup: its offsite copy, what the weekly rehearsal restores,
    # the GFS tiers it is promoted into, and the expiry that follows the nightly run.
    graph(page, 'key:"crm/base_backup"+')
    for name in (
        "offsite_base_backup",
        "restore_rehearsal",
        "weekly_retention",
        "monthly_retention",
        "yearly_retention",
        "retention_expiry",
    ):
        expect(shown(page, name).first).to_be_visible()
    expect(shown(page, "logical_dump")).to_have_count(0)

    # The whole cluster, small enough to see at once (the README's picture).
    page.set_viewport_size({"width": 1400, "height": 1250})
    graph(page, 'group:"crm"')
    expect(shown(page, "restore_rehearsal").first).to_be_visible()
    page.get_by_text("Hide navigation").click()
    page.locator('[aria-label="panel_show_right"]').first.click()  # the asset list
    for _ in range(2):
        page.locator('[aria-label="zoom_out"]').click()
    # At this zoom a node is its name, coloured by its state: red where a check failed.
    expect(page.get_by_text("Latest event")).to_have_count(0)
    for name in ("base_backup", "offsite_dump", "wal_archive", "offsite_wal", "retention_expiry"):
        expect(shown(page, name).first).to_be_visible()
    shot(page, "ui-graph")


def test_base_backups_show_their_verification(page, fleet):
    from playwright.sync_api import expect

    page.goto(page.base + "/assets/crm/base_backup?view=checks")
    expect(shown(page, "base_backup_verified").first).to_be_visible()
    shown(page, "base_backup_verified").first.click()
    expect(page.get_by_text("pg_verifybackup checked every file").first).to_be_visible()
    expect(shown(page, "Passed").first).to_be_visible()
    shot(page, "ui-verified")


def test_a_failed_check_shows_its_message(page, fleet):
    from playwright.sync_api import expect

    page.goto(page.base + "/assets/crm/offsite_base_backup?view=checks")
    expect(shown(page, "three_two_one").first).to_be_visible()
    shown(page, "three_two_one").first.click()
    expect(page.get_by_text("is on this machine, so it is not offsite").first).to_be_visible()
    expect(shown(page, "Failed").first).to_be_visible()
    expect(shown(page, "offsite_copy_matches").first).to_be_visible()  # its passing sibling
    shot(page, "ui-failed-check")


def test_partitions_show_which_days_are_backed_up(page, fleet):
    from playwright.sync_api import expect

    page.goto(page.base + "/assets/app-eu/base_backup?view=partitions")
    # Today's backup, and the two days before it (the partitions' start) without one.
    expect(page.get_by_text("Materialized (1)")).to_be_visible()
    expect(page.get_by_text("Missing (2)")).to_be_visible()
    for day in (fleet.today, fleet.start_date):
        expect(shown(page, day).first).to_be_visible()
    shot(page, "ui-partitions")


def test_the_size_and_duration_plots_have_points(page, fleet):
    from playwright.sync_api import expect

    page.goto(page.base + "/assets/app-eu/base_backup")
    shown(page, "Plots").click()
    for metric in ("size_bytes", "duration_s"):
        chart = f'//span[text()="{metric}"]/ancestor::div[.//canvas][1]//canvas'
        canvas = page.locator(f"xpath={chart}")
        expect(canvas).to_be_visible()
        # The chart is a canvas: count the pixels in the colour of its points.
        points = canvas.evaluate(
            """c => {
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                let n = 0;
                for (let i = 0; i < d.length; i += 4)
                    if (d[i + 2] > 150 && d[i] < 140 && d[i + 1] < 120 && d[i + 3] > 200) n++;
                return n;
            }"""
        )
        assert points > 0, f"the {metric} plot has no points"
    shot(page, "ui-plots")


def test_an_asset_shows_its_description_owners_tags_and_kinds(page, fleet):
    from playwright.sync_api import expect

    page.goto(page.base + "/assets/app-eu/base_backup")
    for text in ("dba@example.com", "platform", "env: prod", "tier: gold", "Postgres", "File"):
        expect(shown(page, text).first).to_be_visible()
    expect(shown(page, "pgbackup/host: 127.0.0.1").first).to_be_visible()
    # The description: what the asset does, then the config's facts and the cluster's words.
    for text in ("pg_basebackup (tar", "Into the repository", "The EU application database"):
        expect(page.get_by_text(text).first).to_be_visible()
    expect(shown(page, "S3")).to_have_count(0)  # the local backup is in a folder, not S3
    shot(page, "ui-asset")
    page.goto(page.base + "/assets/app-eu/offsite_base_backup")
    expect(shown(page, "S3").first).to_be_visible()
