"""Only ads every browser can play are accepted (docs/security.md, L9): the real container (from the file's
first bytes), a video codec that plays in it (H.264, VP8, VP9, AV1 in MP4 or WebM), and a real duration.
Refusals name what was found; a draft with an ad that fails the check cannot launch."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import SimpleUploadedFile

from inference.resources import shared_dir
from research_portal.studies.models import Ad, Study
from research_portal.studies.services import MIN_AD_DURATION_MS, probe_video
from tests.support.services import require_file


def write_video(path: Path, fourcc: str, seconds: float, fps: int = 10) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (160, 120))
    assert writer.isOpened(), f"OpenCV cannot write {fourcc}"
    for index in range(int(seconds * fps)):
        writer.write(np.full((120, 160, 3), (index * 7) % 255, np.uint8))
    writer.release()
    return path


@pytest.fixture
def draft(acme) -> Study:
    return Study.objects.create(organization=acme.organization, name="Draft", allowed_countries=["DE"])


def upload(admin_client, study: Study, name: str, content: bytes):
    return admin_client.post(
        f"/studies/{study.pk}/ads/", {"title": name, "video": SimpleUploadedFile(name, content)}
    )


def refusal(response) -> str:
    assert response.status_code == 400
    return " ".join(response.context["ad_form"].errors["video"])


def test_playable_codecs_in_their_containers_are_accepted(admin_client, draft, tmp_path, ad_video_file):
    h264 = require_file(shared_dir() / "media" / "liveportrait_d3.mp4", "face video")  # H.264 in MP4
    vp9 = write_video(tmp_path / "vp9.webm", "VP90", 2)
    for name, path, codec in [
        ("h264.mp4", h264, "h264"),
        ("vp8.webm", ad_video_file, "VP80"),
        ("vp9.webm", vp9, "VP90"),
    ]:
        assert probe_video(path).codec == codec
        response = upload(admin_client, draft, name, path.read_bytes())
        assert response.status_code == 302, response.content[:400]
    assert [ad.title for ad in draft.ads.order_by("position")] == ["h264.mp4", "vp8.webm", "vp9.webm"]
    assert draft.ads.get(title="h264.mp4").duration_ms > 11_000


def test_what_browsers_cannot_play_is_refused_and_named(admin_client, draft, tmp_path, ad_video_file):
    mpeg4_part2 = write_video(tmp_path / "part2.mp4", "mp4v", 2).read_bytes()
    assert "MPEG-4 Part 2" in refusal(upload(admin_client, draft, "part2.mp4", mpeg4_part2))
    still = cv2.imencode(".jpg", np.zeros((120, 160, 3), np.uint8))[1].tobytes()
    assert "not a video" in refusal(upload(admin_client, draft, "still.mp4", still))
    assert "holds a WEBM video" in refusal(
        upload(admin_client, draft, "renamed.mp4", ad_video_file.read_bytes())
    )
    short = write_video(tmp_path / "short.webm", "VP80", 0.5).read_bytes()
    assert f"at least {MIN_AD_DURATION_MS / 1000:g} s" in refusal(
        upload(admin_client, draft, "short.webm", short)
    )
    mjpeg = write_video(tmp_path / "clip.avi", "MJPG", 2).read_bytes()
    assert "MP4 or WebM" in refusal(upload(admin_client, draft, "clip.avi", mjpeg))
    truncated = ad_video_file.read_bytes()[:60]
    assert refusal(upload(admin_client, draft, "cut.webm", truncated))
    assert not draft.ads.exists()


def test_a_draft_with_an_unplayable_ad_cannot_launch(admin_client, draft, tmp_path):
    """An ad stored before the check existed (or by other means) is checked again at launch, by name."""
    bad = Ad(study=draft, title="Old upload", duration_ms=2000, position=1)
    bad.video.save(
        "old.mp4", ContentFile(write_video(tmp_path / "old.mp4", "mp4v", 2).read_bytes()), save=True
    )
    response = admin_client.post(f"/studies/{draft.pk}/status/launch/", follow=True)
    text = response.content.decode()
    assert "Before launching" in text and "Old upload" in text and "MPEG-4 Part 2" in text
    draft.refresh_from_db()
    assert draft.status == Study.Status.DRAFT
