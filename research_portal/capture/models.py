import secrets

from django.db import models

from research_portal.studies.models import Ad, Study


def new_session_token() -> str:
    # 256 bits: the token is the participant's only credential for the consent page and the socket.
    return secrets.token_urlsafe(32)


class ParticipantSession(models.Model):
    class State(models.TextChoices):
        STARTED = "started", "Started"
        CONSENTED = "consented", "Consented"
        VIEWING = "viewing", "Viewing"
        COMPLETED = "completed", "Completed"
        DECLINED = "declined", "Declined"

    # States in which the capture socket accepts frames.
    CAPTURING_STATES = (State.CONSENTED, State.VIEWING)

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="sessions")
    token = models.CharField(max_length=64, unique=True, default=new_session_token, editable=False)
    country = models.CharField(max_length=2, blank=True)
    external_participant_id = models.CharField(max_length=128, blank=True)
    consent_at = models.DateTimeField(null=True, blank=True)
    state = models.CharField(max_length=12, choices=State.choices, default=State.STARTED)
    created_at = models.DateTimeField(auto_now_add=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["study", "external_participant_id"])]

    def __str__(self) -> str:
        return f"{self.study} / {self.external_participant_id or self.pk}"

    @property
    def is_capturing(self) -> bool:
        return self.state in self.CAPTURING_STATES


class FrameResult(models.Model):
    """The reading of one webcam frame. The frame itself is never stored."""

    session = models.ForeignKey(ParticipantSession, on_delete=models.CASCADE, related_name="frame_results")
    ad = models.ForeignKey(Ad, on_delete=models.CASCADE, related_name="frame_results")
    seq = models.PositiveIntegerField()
    media_time_ms = models.PositiveIntegerField()
    captured_at = models.DateTimeField()
    face_found = models.BooleanField()
    face_x = models.IntegerField(null=True)
    face_y = models.IntegerField(null=True)
    face_w = models.IntegerField(null=True)
    face_h = models.IntegerField(null=True)
    face_score = models.FloatField(null=True)
    angry = models.FloatField(null=True)
    disgust = models.FloatField(null=True)
    fear = models.FloatField(null=True)
    happy = models.FloatField(null=True)
    sad = models.FloatField(null=True)
    surprise = models.FloatField(null=True)
    neutral = models.FloatField(null=True)
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
