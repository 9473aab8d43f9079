"""CAP 1.2 for a CAD: issued from the hub's database, served as a feed, pushed with retries.

- `issue_and_push` runs beside the hub's intake: after each commit (and at least every
  second) it turns new alert transitions into CAP messages (`HubStore.issue_cap`, in the
  database, so a restart issues each once), then, when a push endpoint is configured, posts
  them to it oldest first (`Content-Type: application/cap+xml`). A failed post (no answer,
  a timeout, any status but 2xx) is kept in the queue and tried again with capped backoff;
  the messages behind it wait, so the CAD gets each alert's messages in order. A hub killed
  mid-post posts that message again after its restart: delivery is at least once, and the
  CAD tells repeats apart by the CAP `identifier`.
- `atom_feed` is the pollable feed (served by the web console at `/cap/feed`): an Atom
  document whose entries carry the CAP messages inline, oldest first, after a cursor.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from lxml import etree
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from dispatch.hub.cap import Status
from dispatch.hub.store import HubStore
from firmware_bridge.backoff import backoff_delay

log = logging.getLogger(__name__)

ATOM_NS = "http://www.w3.org/2005/Atom"
CAP_TYPE = "application/cap+xml"
CLAIM_S = 15.0  # a hub's hold on the message it posts (longer than a post may take); a hub
# killed mid-post delays the queue by this much, another hub or its restart then takes it
RETRY_MAX_S = 60.0
POLL_S = 1.0
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True)


@dataclass(frozen=True)
class Push:
    """Where to push CAP messages, and the bearer token to send, if any."""

    url: str
    token: str | None = None
    timeout_s: float = 10.0
    retry_max_s: float = RETRY_MAX_S


async def issue_and_push(
    store: HubStore, changed: asyncio.Event, *, sender: str, status: Status = "Actual",
    push: Push | None = None, on_state: Callable[[str], None] = log.warning,
) -> None:
    """Issue CAP messages for new transitions and push them, forever (cancel to stop)."""
    attempt = 0
    async with httpx.AsyncClient(timeout=push.timeout_s if push else 10.0) as client:
        while True:
            try:
                while await asyncio.to_thread(store.issue_cap, sender=sender, status=status):
                    pass
                if push is not None:
                    attempt = await _push_due(store, client, push, attempt, on_state)
            except IntegrityError:
                pass  # another hub issued the same transitions first: take the rest next time
            except SQLAlchemyError as exc:
                on_state(f"CAP: database failed ({exc.__class__.__name__}); retrying")
            changed.clear()
            try:
                async with asyncio.timeout(POLL_S):
                    await changed.wait()
            except TimeoutError:
                pass


async def _push_due(store: HubStore, client: httpx.AsyncClient, push: Push, attempt: int,
                    on_state: Callable[[str], None]) -> int:
    """Post due messages oldest first until none is due or one fails; the failure count."""
    headers = {"Content-Type": CAP_TYPE}
    if push.token:
        headers["Authorization"] = f"Bearer {push.token}"
    while (row := await asyncio.to_thread(store.claim_push, time.time(), CLAIM_S)) is not None:
        try:
            response = await client.post(push.url, content=row["xml"], headers=headers)
            problem = None if response.is_success else f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            problem = f"{exc.__class__.__name__}: {exc}"[:200]
        except asyncio.CancelledError:  # stopping: the next hub need not wait for the claim
            store.push_failed(row["id"], "the hub stopped while posting it", time.time())
            raise
        if problem is None:
            await asyncio.to_thread(store.pushed, row["id"], time.time())
            attempt = 0
            continue
        delay = backoff_delay(attempt, 0.5, push.retry_max_s)
        attempt += 1
        on_state(f"CAP push of {row['identifier']} failed ({problem}); it and the "
                 f"messages behind it wait, retrying in {delay:.1f}s")
        await asyncio.to_thread(store.push_failed, row["id"], problem, time.time() + delay)
        break
    return attempt


def atom_feed(rows: Sequence[dict[str, Any]], *, base: str, sender: str) -> bytes:
    """An Atom feed of CAP messages (rows of `HubStore.cap_feed`), each inline; a `next`
    link carries the cursor to poll with."""
    def sub(parent: etree._Element, name: str, text: str | None = None,
            **attrs: str) -> etree._Element:
        element = etree.SubElement(parent, f"{{{ATOM_NS}}}{name}", attrs)
        if text is not None:
            element.text = text
        return element

    feed = etree.Element(f"{{{ATOM_NS}}}feed", nsmap={None: ATOM_NS})  # type: ignore[dict-item]
    sub(feed, "id", f"urn:stationgw:cap:{sender}")
    sub(feed, "title", "station-gateway hub: CAP 1.2 messages")
    sub(feed, "updated", rows[-1]["sent"] if rows else "1970-01-01T00:00:00+00:00")
    author = sub(feed, "author")
    sub(author, "name", sender)
    after = rows[-1]["id"] if rows else None
    sub(feed, "link", rel="self", href=f"{base}/cap/feed")
    if after is not None:
        sub(feed, "link", rel="next", href=f"{base}/cap/feed?after={after}")
    for row in rows:
        entry = sub(feed, "entry")
        sub(entry, "id", f"urn:stationgw:cap:{row['identifier']}")
        sub(entry, "title", f"{row['msg_type']} {row['identifier']}")
        sub(entry, "updated", row["sent"])
        sub(entry, "link", rel="alternate", type=CAP_TYPE,
            href=f"{base}/cap/messages/{row['identifier']}.xml")
        content = sub(entry, "content", type=CAP_TYPE)
        content.append(etree.fromstring(row["xml"], _PARSER))
    return bytes(etree.tostring(feed, xml_declaration=True, encoding="UTF-8"))
