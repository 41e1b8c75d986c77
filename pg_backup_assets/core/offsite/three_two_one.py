"""The 3-2-1 rule, judged honestly from where the copies really are."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from urllib.parse import urlparse

from pg_backup_assets.core.config import Config


@dataclass(frozen=True)
class RuleVerdict:
    passed: bool
    message: str
    copies: int
    media: int
    offsite: bool


def three_two_one(config: Config, local_ok: bool, offsite_ok: bool) -> RuleVerdict:
    """3 copies (live cluster, repository, offsite), 2 kinds of media, 1 offsite — honestly."""
    copies = 1 + int(local_ok) + int(offsite_ok)
    media = {"local filesystem"}
    notes = []
    is_offsite = False
    off = config.offsite
    if off is None:
        notes.append("no offsite store is configured (config key 'offsite')")
    elif off.s3 is not None:
        media.add("object storage")
        host = urlparse(off.s3.endpoint_url).hostname if off.s3.endpoint_url else None
        if host and _is_this_machine(host):
            notes.append(
                f"the S3 endpoint {off.s3.endpoint_url} is on this machine, so it is not offsite"
            )
        else:
            is_offsite = True
    else:
        try:
            same_fs = os.stat(off.path).st_dev == os.stat(config.repository).st_dev
        except OSError as exc:
            same_fs = False
            notes.append(f"cannot stat the offsite path {off.path}: {exc.strerror}")
        if same_fs:
            notes.append(
                f"the offsite path {off.path} is on the same filesystem as the repository "
                f"{config.repository}: one disk failure takes both, so it is not offsite"
            )
        else:
            media.add("second filesystem")
            is_offsite = True
            notes.append(
                f"the offsite path {off.path} is another filesystem; it counts as offsite only "
                "if it is physically elsewhere"
            )
    if not local_ok:
        notes.append("the repository copy is not verified")
    if off is not None and not offsite_ok:
        notes.append("the offsite copy does not match")
    passed = copies >= 3 and len(media) >= 2 and is_offsite
    summary = f"{copies} copies, {len(media)} kinds of media ({', '.join(sorted(media))}), "
    summary += f"{'1' if is_offsite else '0'} offsite"
    return RuleVerdict(
        passed, summary + ("; " + "; ".join(notes) if notes else ""), copies, len(media), is_offsite
    )


def _is_this_machine(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain") or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
