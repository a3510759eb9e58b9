"""The live feed of a dashboard: joins the Channels group of its ad or study and, whenever the rollups
change (live.notify_rollups_changed, throttled per group), pushes the recomputed dashboard for the filters the
page subscribed with. Thin: access, filters and numbers come from services and dashboard."""

from __future__ import annotations

import asyncio
import logging

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.http import Http404

from research_portal.analytics.dashboard import build_ad_dashboard, build_study_overview
from research_portal.analytics.live import ad_group, study_group
from research_portal.analytics.services import (
    Filters,
    InvalidFilters,
    check_filters,
    visible_ad,
    visible_study,
)
from research_portal.events import remember_server_loop

logger = logging.getLogger(__name__)

CLOSE_UNAUTHENTICATED = 4001
CLOSE_NOT_FOUND = 4004


class NotSignedIn(Exception):
    pass


def open_target(user, kind: str, target_id: int):
    if user is None or not user.is_authenticated:
        raise NotSignedIn
    return visible_ad(user, target_id) if kind == "ad" else visible_study(user, target_id)


def build_payload(kind: str, target, filters: Filters) -> dict:
    if kind == "ad":
        return build_ad_dashboard(target, filters, reconcile=False)
    return build_study_overview(target, filters)


class LiveDashboardConsumer(AsyncJsonWebsocketConsumer):
    kind = "ad"  # or "study" (the subclasses below)
    target = None

    async def connect(self) -> None:
        await self.accept()  # accept first: a close code only reaches the browser on an open socket
        remember_server_loop(asyncio.get_running_loop())
        target_id = self.scope["url_route"]["kwargs"]["target_id"]
        try:
            self.target = await database_sync_to_async(open_target)(
                self.scope.get("user"), self.kind, target_id
            )
        except NotSignedIn:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        except Http404:  # missing, or another organisation's (whose existence is not revealed)
            await self.close(code=CLOSE_NOT_FOUND)
            return
        self.group = ad_group(target_id) if self.kind == "ad" else study_group(target_id)
        self.filters = Filters()
        self.refreshing: asyncio.Task | None = None
        self.dirty = False
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.send_json({"type": "hello", "kind": self.kind, "id": target_id})

    async def disconnect(self, code: int) -> None:
        if self.target is None:
            return
        await self.channel_layer.group_discard(self.group, self.channel_name)
        if self.refreshing is not None:
            self.refreshing.cancel()

    async def receive_json(self, content, **kwargs) -> None:
        if self.target is None or not isinstance(content, dict):
            return
        if content.get("type") == "subscribe":
            try:
                self.filters = check_filters(content.get("filters") or {})
            except InvalidFilters as error:
                await self.send_json({"type": "error", "detail": str(error)})
                return
            await self.send_json({"type": "subscribed"})
        elif content.get("type") == "refresh":
            self.schedule_refresh()

    async def analytics_changed(self, event: dict) -> None:
        self.schedule_refresh()

    def schedule_refresh(self) -> None:
        # One computation at a time per socket; changes during it fold into one more round.
        if self.refreshing is not None and not self.refreshing.done():
            self.dirty = True
            return
        self.refreshing = asyncio.create_task(self.refresh())

    async def refresh(self) -> None:
        while True:
            self.dirty = False
            try:
                payload = await database_sync_to_async(build_payload)(self.kind, self.target, self.filters)
            except Exception:
                logger.exception("live refresh of %s %s failed", self.kind, self.target.pk)
                return
            await self.send_json({"type": "update", "data": payload})
            if not self.dirty:
                return


class AdDashboardConsumer(LiveDashboardConsumer):
    kind = "ad"


class StudyOverviewConsumer(LiveDashboardConsumer):
    kind = "study"
