"""What capture announces to the layers above it, so that it never imports them (docs/architecture.md,
"Layers"): analytics keeps its rollups and live dashboards in step by listening (analytics/signals.py)."""

from __future__ import annotations

from django.dispatch import Signal

# Sent by storage.store_results after each bulk insert, with `rows`: the FrameResults just stored (none stored
# before). Receivers must not raise: the rows are committed, and their frames are acked already.
frames_stored = Signal()
