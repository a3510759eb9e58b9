import secrets

from django.db import models

from research_portal.capture.readings import READING_LABELS
from research_portal.studies.models import Ad, ConsentVersion, Study


def new_session_token() -> str:
    # 256 bits: the token is the participant's only credential for the consent page and the socket.
    return secrets.token_urlsafe(32)


class ParticipantSession(models.Model):
    class State(models.TextChoices):
        STARTED = "started", "Started"
        CONSENTED = "consented", "Consented"
        VIEWING = "viewing", "Viewing"
        # A validated complete: every ad watched with enough usable frames; counts toward quotas.
        COMPLETED = "completed", "Completed"
        # Ended without a validated complete; `exclusion_reason` says why.
        FAILED = "failed", "Failed"
        DECLINED = "declined", "Declined"
        OVER_QUOTA = "over_quota", "Over quota"

    class DeviceType(models.TextChoices):
        DESKTOP = "desktop", "Desktop"
        MOBILE = "mobile", "Mobile"
        TABLET = "tablet", "Tablet"
        UNKNOWN = "unknown", "Unknown"

    # States in which the capture socket accepts frames.
    CAPTURING_STATES = (State.CONSENTED, State.VIEWING)
    ENDED_STATES = (State.COMPLETED, State.FAILED, State.DECLINED, State.OVER_QUOTA)

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="sessions")
    token = models.CharField(max_length=64, unique=True, default=new_session_token, editable=False)
    country = models.CharField(max_length=2, blank=True)
    external_participant_id = models.CharField(max_length=128, blank=True)
    # Made by the study link (not a preview, not before migration 0006): such sessions are unique per panel
    # id and study, so a link opened twice at once still makes one session.
    via_entry_link = models.BooleanField(default=False, editable=False)
    device_type = models.CharField(max_length=8, choices=DeviceType.choices, default=DeviceType.UNKNOWN)
    # The participant's language for every page (from the country, else the browser).
    language = models.CharField(max_length=8, default="en")
    # Ad ids in the order this participant sees them (fixed, or shuffled once at entry).
    ad_sequence = models.JSONField(default=list, blank=True)
    consent_version = models.ForeignKey(ConsentVersion, null=True, blank=True, on_delete=models.PROTECT)
    consent_at = models.DateTimeField(null=True, blank=True)
    check_attempts = models.PositiveSmallIntegerField(default=0)
    # Consecutive check frames without a problem; the check passes at CHECK_PASS_STREAK.
    check_good_streak = models.PositiveSmallIntegerField(default=0)
    # The last frame handed to the analysers, so validation knows when every accepted frame is stored.
    last_enqueued_seq = models.PositiveIntegerField(null=True, blank=True)
    last_enqueued_at = models.DateTimeField(null=True, blank=True)
    # When the device and face check before the first ad was passed.
    checks_passed_at = models.DateTimeField(null=True, blank=True)
    state = models.CharField(max_length=12, choices=State.choices, default=State.STARTED)
    # A study admin trying the study as a participant: never counts toward quotas or analytics.
    is_preview = models.BooleanField(default=False)
    exclusion_reason = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # When viewing ended (every ad played, or the session ended before): validation comes after it, and only
    # validation makes a session State.COMPLETED.
    viewing_ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["study", "external_participant_id"]),
            # Quota seats are counted per study, country and state at every entry.
            models.Index(fields=["study", "country", "state"], name="session_quota_count"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["study", "external_participant_id"],
                condition=models.Q(via_entry_link=True) & ~models.Q(external_participant_id=""),
                name="participantsession_one_per_panel_id",
            )
        ]

    def __str__(self) -> str:
        return f"{self.study} / {self.external_participant_id or self.pk}"

    @property
    def is_capturing(self) -> bool:
        return self.state in self.CAPTURING_STATES and self.viewing_ended_at is None

    @property
    def has_ended(self) -> bool:
        return self.state in self.ENDED_STATES


# Sessions the study link refused (quota full) before the participant started: recorded so that the study
# overview counts refusals, never counted as started.
REFUSED_AT_ENTRY = models.Q(state=ParticipantSession.State.OVER_QUOTA, consent_at__isnull=True)


class SessionEvent(models.Model):
    """Something that happened during viewing that analysis should know about (tab hidden, camera lost...)."""

    class Name(models.TextChoices):
        TAB_HIDDEN = "tab_hidden", "Tab hidden"
        TAB_VISIBLE = "tab_visible", "Tab visible again"
        CAMERA_STOPPED = "camera_stopped", "Camera stopped"
        CAMERA_RESUMED = "camera_resumed", "Camera resumed"
        FACE_LOST = "face_lost", "Face lost"
        OTHER_TAB = "other_tab", "Opened in another tab"
        CHECK_FAILED = "check_failed", "Face check attempt failed"
        # The participant's browser could not play an ad (`ad`; `detail`: why): the session ended Failed.
        AD_UNPLAYABLE = "ad_unplayable", "Ad could not be played"

    session = models.ForeignKey(ParticipantSession, on_delete=models.CASCADE, related_name="events")
    name = models.CharField(max_length=20, choices=Name.choices)
    ad = models.ForeignKey(Ad, null=True, blank=True, on_delete=models.CASCADE)
    media_time_ms = models.PositiveIntegerField(null=True, blank=True)
    detail = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["session", "created_at", "id"]

    def __str__(self) -> str:
        return f"{self.session_id} {self.name}"


class FrameResult(models.Model):
    """The reading of one webcam frame. The frame itself is never stored."""

    session = models.ForeignKey(ParticipantSession, on_delete=models.CASCADE, related_name="frame_results")
    # NULL: the neutral baseline screen shown before the first ad (ad id 0 on the wire).
    ad = models.ForeignKey(Ad, on_delete=models.CASCADE, related_name="frame_results", null=True, blank=True)
    seq = models.PositiveIntegerField()
    media_time_ms = models.PositiveIntegerField()
    captured_at = models.DateTimeField()
    face_found = models.BooleanField()
    face_x = models.IntegerField(null=True)
    face_y = models.IntegerField(null=True)
    face_w = models.IntegerField(null=True)
    face_h = models.IntegerField(null=True)
    face_score = models.FloatField(null=True)
    # One probability column per label in readings.READING_LABELS (added below): NULL without a face, and
    # NULL for a label the reading's model does not have.
    # Smile intensity = P(happy); valence = model-defined weighted sum of the model's probabilities, [-1, 1].
    smile = models.FloatField(null=True)
    valence = models.FloatField(null=True)
    # Usability of the face for analysis, 0 (useless) .. 1 (large, sharp, well lit, frontal).
    quality = models.FloatField(null=True)
    # Rough head pose in degrees from the detector's landmarks (inference.align.pose_angles: yaw + = nose
    # towards image right, pitch + = face turned up), and whether it is turned to the screen
    # (inference.attention). NULL without a face, and without landmarks (Haar: pose unknown).
    face_yaw = models.FloatField(null=True)
    face_pitch = models.FloatField(null=True)
    attending = models.BooleanField(null=True)
    # Why the frame could not be analysed (e.g. undecodable JPEG); empty when it was.
    error = models.CharField(max_length=200, blank=True)
    model_version = models.CharField(max_length=64)
    stored_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["session", "seq"], name="frameresult_unique_session_seq"),
        ]
        indexes = [models.Index(fields=["ad", "media_time_ms"])]

    def __str__(self) -> str:
        return f"{self.session_id}#{self.seq}"


for _label in READING_LABELS:
    FrameResult.add_to_class(_label, models.FloatField(null=True))
