"""Rollups the dashboards read instead of raw frames (see docs/analytics.md, "Rollups and indexes").

    FrameResult (raw, ~5 per participant-second)
      -> SecondRollup    one participant, one second of one ad, one quality level, one model: frame sums
      -> BaselineRollup  one participant's baseline-screen frame sums per quality level and model
      -> SecondCell      sufficient statistics (n, sums, sums of squares of participant means) per
                         second of an ad and per combination of the filter dimensions: what a dashboard
                         page view sums up
      -> ParticipantAdSummary  one participant's whole-ad summary (mean valence, peak smile, smiled?)
    SessionRollup: the filter attributes (country, device, completed, day) the session's rows are filed under.

All rows are maintained per session by `rollups.do_refresh_session` (called from capture's store_results)
and rebuilt set-wise by `rollups.do_rebuild_rollups`.
"""

from __future__ import annotations

from django.db import models

from research_portal.analytics.definitions import CELL_STATS, MEASURES, attention_columns
from research_portal.capture.models import ParticipantSession
from research_portal.capture.readings import READING_LABELS
from research_portal.studies.models import Ad, Study

# Rollup tables hold derived data: their foreign keys cascade in Django (deleting a session or ad deletes its
# rollups) but carry no database constraint, whose per-row trigger would dominate the cost of writing them.


class SessionRollup(models.Model):
    """The filter attributes a session's rollup rows were added to SecondCell under. When the session changes
    (it completes, fails...), its contribution is moved to the cells of its new attributes."""

    session = models.OneToOneField(
        ParticipantSession,
        on_delete=models.CASCADE,
        db_constraint=False,
        primary_key=True,
        related_name="analytics_rollup",
    )
    study = models.ForeignKey(Study, on_delete=models.CASCADE, db_constraint=False, related_name="+")
    country = models.CharField(max_length=2, blank=True)
    device_type = models.CharField(max_length=8)
    completed = models.BooleanField()
    day = models.DateField()
    # Set when an incremental update failed; the next reconcile recomputes the session from its raw frames.
    stale = models.BooleanField(default=False)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"session {self.session_id}: {self.country} {self.device_type} completed={self.completed}"


class SecondRollup(models.Model):
    """Frame sums of one participant in one second [second, second + 1) of one ad read by one model version:
    the readings' sums over the frames with a face at quality level `level` (definitions.QUALITY_LEVELS),
    and the attention counts over every analysed frame of the second, face or not, whatever the level.

    A row exists for every level of every participant-second with an analysed frame, so `n_frames` (and the
    readings' sums) may be 0 where no frame had a usable face at that level."""

    session = models.ForeignKey(
        ParticipantSession, on_delete=models.CASCADE, db_constraint=False, related_name="+", db_index=False
    )
    ad = models.ForeignKey(Ad, on_delete=models.CASCADE, db_constraint=False, related_name="+")
    second = models.IntegerField()
    level = models.SmallIntegerField()
    model_version = models.CharField(max_length=64)
    n_frames = models.IntegerField()
    n_valence = models.IntegerField()
    # Frames analysed (no error), and those whose face was turned to the screen (FrameResult.attending;
    # a face without a pose counts as attending): attention = n_attending / n_analysed.
    n_analysed = models.IntegerField(default=0)
    n_attending = models.IntegerField(default=0)

    class Meta:
        constraints = [
            # Also the index of every per-session read and write (session first).
            models.UniqueConstraint(
                fields=["session", "ad", "second", "level", "model_version"], name="secondrollup_unique_key"
            )
        ]

    def __str__(self) -> str:
        return f"session {self.session_id} ad {self.ad_id} second {self.second} level {self.level}"


class BaselineRollup(models.Model):
    """Frame sums of one participant's baseline screen (FrameResult.ad NULL) per quality level and model."""

    session = models.ForeignKey(
        ParticipantSession, on_delete=models.CASCADE, db_constraint=False, related_name="+", db_index=False
    )
    level = models.SmallIntegerField()
    model_version = models.CharField(max_length=64)
    n_frames = models.IntegerField()
    n_valence = models.IntegerField()
    n_analysed = models.IntegerField(default=0)
    n_attending = models.IntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["session", "level", "model_version"], name="baselinerollup_unique_key"
            )
        ]

    def __str__(self) -> str:
        return f"baseline of session {self.session_id} level {self.level}"


for _measure in MEASURES:
    # An emotion label's sum is NULL when the rows' model version does not have that label.
    _options = {"null": True, "default": None} if _measure in READING_LABELS else {"default": 0.0}
    SecondRollup.add_to_class(f"sum_{_measure}", models.FloatField(**_options))
    BaselineRollup.add_to_class(f"sum_{_measure}", models.FloatField(**_options))


class SecondCell(models.Model):
    """Sufficient statistics of the per-participant means of one second of an ad, for one combination of the
    filter dimensions. A dashboard sums the cells its filters select: participants stay the unit (each
    participant-second adds 1 to n, its mean to s and its square to q) and no raw frame is read.

    Per measure m: n_m, s_m, q_m (participants with m, sum, sum of squares of their means) and nb_m, sb_m,
    qb_m (the same for means minus the participant's baseline mean; participants with a baseline only).
    `participants` counts those with a usable reading at the cell's level; n_attention, s_attention,
    q_attention those with an analysed frame, and their attention shares (definitions.ATTENTION)."""

    ad = models.ForeignKey(
        Ad, on_delete=models.CASCADE, db_constraint=False, related_name="+", db_index=False
    )
    level = models.SmallIntegerField()
    model_version = models.CharField(max_length=64)
    second = models.IntegerField()
    country = models.CharField(max_length=2, blank=True)
    device_type = models.CharField(max_length=8)
    completed = models.BooleanField()
    day = models.DateField()
    participants = models.IntegerField(default=0)

    class Meta:
        constraints = [
            # The read index: a page view selects (ad, level, model_version) and ranges over the rest.
            models.UniqueConstraint(
                fields=[
                    "ad",
                    "level",
                    "model_version",
                    "second",
                    "country",
                    "device_type",
                    "completed",
                    "day",
                ],
                name="secondcell_unique_key",
            )
        ]

    def __str__(self) -> str:
        return f"ad {self.ad_id} second {self.second} {self.country}/{self.device_type}/{self.day}"


for _measure in MEASURES:
    for _stat in CELL_STATS:
        field = models.IntegerField if _stat.startswith("n") else models.FloatField
        SecondCell.add_to_class(f"{_stat}_{_measure}", field(default=0))
for _column in attention_columns():
    field = models.IntegerField if _column.startswith("n") else models.FloatField
    SecondCell.add_to_class(_column, field(default=0))


class ParticipantAdSummary(models.Model):
    """One participant's whole ad at one quality level: for the per-country summary table and the retention
    curve. A row exists for every participant with an analysed frame in the ad; `n_seconds` counts the
    seconds with a usable reading at the level (0: none)."""

    session = models.ForeignKey(
        ParticipantSession, on_delete=models.CASCADE, db_constraint=False, related_name="+", db_index=False
    )
    ad = models.ForeignKey(
        Ad, on_delete=models.CASCADE, db_constraint=False, related_name="+", db_index=False
    )
    level = models.SmallIntegerField()
    model_version = models.CharField(max_length=64)
    country = models.CharField(max_length=2, blank=True)
    device_type = models.CharField(max_length=8)
    completed = models.BooleanField()
    day = models.DateField()
    n_seconds = models.IntegerField()
    n_frames = models.IntegerField()
    # Mean over the participant's seconds of their per-second valence (raw and baseline-corrected).
    mean_valence = models.FloatField(null=True)
    mean_valence_bc = models.FloatField(null=True)
    # Highest per-second smile mean (raw and baseline-corrected); smiled = peak_smile >= SMILE_THRESHOLD.
    peak_smile = models.FloatField(null=True)
    peak_smile_bc = models.FloatField(null=True)
    smiled = models.BooleanField(default=False)
    # Mean over the participant's seconds of their per-second expressiveness (1 - p(neutral); raw and
    # baseline-corrected), and of their per-second attention share (every analysed second).
    mean_expressiveness = models.FloatField(null=True)
    mean_expressiveness_bc = models.FloatField(null=True)
    mean_attention = models.FloatField(null=True)
    # Retention: the participant attended (attention >= ATTENTION_THRESHOLD) in every analysed second before
    # this one, i.e. is retained at second s while s < retained_seconds (the first inattentive second, or
    # the second after their last analysed one).
    retained_seconds = models.IntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["session", "ad", "level", "model_version"], name="participantad_unique_key"
            )
        ]
        indexes = [
            models.Index(fields=["ad", "level", "model_version", "country"], name="participantad_read_idx")
        ]

    def __str__(self) -> str:
        return f"session {self.session_id} ad {self.ad_id} level {self.level}"
