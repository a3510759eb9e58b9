"""The live feed of a dashboard: joins the Channels group of its ad or study and, whenever the rollups
change (live.notify_rollups_changed, throttled per group), pushes the recomputed dashboard for the filters the
page subscribed with; an ad's feed also pushes the provisional figures of who is watching now whenever its
frames are stored (live.notify_frames_stored, provisional.py). Thin: access, filters and numbers come from
services, dashboard and provisional.

Access is checked at connect and again before every push (at most every ANALYTICS_LIVE_ACCESS_RECHECK_S,
and at once when accounts.signals announces a change to the user, the study or the ad): a socket whose user
signed out or lost access is closed, and gets nothing more.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.contrib.auth import get_user_model
from django.http import Http404

from research_portal.accounts.permissions import is_signed_in
from research_portal.accounts.sessions import user_for_session_key
from research_portal.accounts.signals import user_access_group
from research_portal.analytics.dashboard import build_ad_dashboard, build_study_overview
from research_portal.analytics.live import ad_group, study_group
from research_portal.analytics.provisional import live_snapshot
from research_portal.analytics.services import Filters, InvalidFilters, parse_filters
from research_portal.events import remember_server_loop
from research_portal.studies.permissions import ad_for_viewer, study_for_viewer
from research_portal.studies.signals import ad_access_group, study_access_group

logger = logging.getLogger(__name__)

# Close codes (docs/analytics.md, "Live view").
CLOSE_UNAUTHENTICATED = 4001  # not signed in at connect, or signed out / deactivated / password changed since
CLOSE_ACCESS_REVOKED = 4003  # still signed in, but no longer allowed to see this ad or study
CLOSE_NOT_FOUND = 4004  # at connect: no such ad/study, or another organisation's (existence not revealed)


# What the page sends: {"type": "subscribe", "filters": {...}} (a few hundred characters)
# or {"type": "refresh"}.
MAX_MESSAGE_CHARS = 64 * 1024
MESSAGE_FORMAT = 'Messages are JSON objects: {"type": "subscribe", "filters": {...}} or {"type": "refresh"}.'


class NotSignedIn(Exception):
    pass


class InvalidMessage(ValueError):
    """A client message the socket cannot read; the message is sent back as the error's detail."""


def read_message(text: str | None, data: bytes | None) -> object:
    """The JSON value of a text message: InvalidMessage for binary messages, text over MAX_MESSAGE_CHARS (so
    that nothing large is parsed) and text that is not JSON or nests past the parser's recursion limit."""
    if text is None or data is not None:
        raise InvalidMessage("Messages are text (JSON), not binary.")
    if len(text) > MAX_MESSAGE_CHARS:
        raise InvalidMessage(f"Messages are at most {MAX_MESSAGE_CHARS} characters.")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as error:
        raise InvalidMessage(MESSAGE_FORMAT) from error


class AccessLost(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def open_target(user, kind: str, target_id: int):
    if user is None or not user.is_authenticated:
        raise NotSignedIn
    return ad_for_viewer(user, target_id) if kind == "ad" else study_for_viewer(user, target_id)


def check_live_access(session_key: str | None, user_id: int, kind: str, target_id: int) -> None:
    """Raise AccessLost unless the socket's user may still read the target, decided as for a page request:
    the session still signs this active user in (when the socket came with one), and the permissions rule
    (membership, organisation, superuser) still shows them the ad or study."""
    if session_key is not None:
        user = user_for_session_key(session_key)
    else:  # a socket opened without a session (an ASGI stack without SessionMiddleware): the user alone
        user = get_user_model().objects.filter(pk=user_id).first()
    if user is None or not is_signed_in(user) or user.pk != user_id:
        raise AccessLost(CLOSE_UNAUTHENTICATED)
    try:
        open_target(user, kind, target_id)
    except Http404 as gone:
        raise AccessLost(CLOSE_ACCESS_REVOKED) from gone


def build_payload(kind: str, target, filters: Filters) -> dict:
    if kind == "ad":
        return build_ad_dashboard(target, filters)
    return build_study_overview(target, filters)


def access_recheck_s() -> float:
    return settings.ANALYTICS_LIVE_ACCESS_RECHECK_S


class LiveDashboardConsumer(AsyncJsonWebsocketConsumer):
    kind = "ad"  # or "study" (the subclasses below)
    target = None
    revoked = False

    async def connect(self) -> None:
        await self.accept()  # accept first: a close code only reaches the browser on an open socket
        remember_server_loop(asyncio.get_running_loop())
        target_id = self.scope["url_route"]["kwargs"]["target_id"]
        user = self.scope.get("user")
        try:
            self.target = await database_sync_to_async(open_target)(user, self.kind, target_id)
        except NotSignedIn:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        except Http404:  # missing, or another organisation's (whose existence is not revealed)
            await self.close(code=CLOSE_NOT_FOUND)
            return
        session = self.scope.get("session")
        self.session_key = session.session_key if session is not None else None
        self.user_id = user.pk
        self.access_checked_at = time.monotonic()
        self.group = ad_group(target_id) if self.kind == "ad" else study_group(target_id)
        study_id = self.target.study_id if self.kind == "ad" else self.target.pk
        self.groups_joined = [self.group, user_access_group(user.pk), study_access_group(study_id)]
        if self.kind == "ad":
            self.groups_joined.append(ad_access_group(target_id))
        self.filters = Filters()
        self.refreshing: asyncio.Task | None = None
        self.dirty = False
        for group in self.groups_joined:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.send_json({"type": "hello", "kind": self.kind, "id": target_id})

    async def disconnect(self, code: int) -> None:
        if self.target is None:
            return
        for group in self.groups_joined:
            await self.channel_layer.group_discard(group, self.channel_name)
        if self.refreshing is not None:
            self.refreshing.cancel()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs) -> None:
        """A message the socket cannot read (binary, not JSON, too long, nested past the parser's limit) is
        answered with an error, and the socket stays open."""
        if self.target is None or self.revoked:
            return
        try:
            content = read_message(text_data, bytes_data)
        except InvalidMessage as error:
            await self.send_json({"type": "error", "detail": str(error)})
            return
        await self.receive_json(content, **kwargs)

    async def receive_json(self, content, **kwargs) -> None:
        if self.target is None or self.revoked:
            return
        kind = content.get("type") if isinstance(content, dict) else None
        if kind == "subscribe":
            try:
                self.filters = parse_filters(content.get("filters", {}))
            except InvalidFilters as error:
                await self.send_json({"type": "error", "detail": str(error)})
                return
            await self.send_json({"type": "subscribed"})
        elif kind == "refresh":
            self.schedule_refresh()
        else:
            await self.send_json({"type": "error", "detail": MESSAGE_FORMAT})

    async def analytics_changed(self, event: dict) -> None:
        self.schedule_refresh()

    async def analytics_live(self, event: dict) -> None:
        """Frames of the ad were stored: push the provisional figures (provisional.py), read from the tally
        (Redis or this process), never from the database's frames."""
        if self.kind != "ad" or not await self.has_access():
            return
        try:
            snapshot = await sync_to_async(live_snapshot)(self.target.pk)
        except Exception:
            logger.exception("live snapshot of ad %s failed", self.target.pk)
            return
        await self.send_json({"type": "live", "data": snapshot.to_json()})

    async def access_changed(self, event: dict) -> None:
        """accounts.signals: something that decides this socket's access changed; re-check now."""
        await self.has_access(fresh=True)

    async def has_access(self, fresh: bool = False) -> bool:
        """Whether the socket may still receive its target's data; closes it when not. A check is reused for
        ANALYTICS_LIVE_ACCESS_RECHECK_S, so a burst of pushes costs one check."""
        if self.revoked:
            return False
        if not fresh and time.monotonic() - self.access_checked_at < access_recheck_s():
            return True
        if fresh:  # a push running meanwhile must not rely on the previous check either
            self.access_checked_at = float("-inf")
        try:
            await database_sync_to_async(check_live_access)(
                self.session_key, self.user_id, self.kind, self.target.pk
            )
        except AccessLost as lost:
            if not self.revoked:
                self.revoked = True
                await self.close(code=lost.code)
            return False
        self.access_checked_at = time.monotonic()
        return True

    def schedule_refresh(self) -> None:
        # One computation at a time per socket; changes during it fold into one more round.
        if self.revoked:
            return
        if self.refreshing is not None and not self.refreshing.done():
            self.dirty = True
            return
        self.refreshing = asyncio.create_task(self.refresh())

    async def refresh(self) -> None:
        while True:
            self.dirty = False
            if not await self.has_access():
                return
            try:
                payload = await database_sync_to_async(build_payload)(self.kind, self.target, self.filters)
            except Exception:
                logger.exception("live refresh of %s %s failed", self.kind, self.target.pk)
                return
            # Checked again after the computation: access may have gone while it ran.
            if not await self.has_access():
                return
            await self.send_json({"type": "update", "data": payload})
            if not self.dirty:
                return


class AdDashboardConsumer(LiveDashboardConsumer):
    kind = "ad"


class StudyOverviewConsumer(LiveDashboardConsumer):
    kind = "study"
