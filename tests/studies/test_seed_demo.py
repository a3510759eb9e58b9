"""`manage.py seed_demo`, run by `make run`: a working admin login, a live study with a playable ad, and a
quiet terminal (no OpenCV notice about the demo ad's codec)."""

import re
import subprocess
import sys

import pytest
from django.core.management import call_command

from inference.resources import REPO_ROOT
from research_portal.studies.models import Study
from tests.support.services import service_env

pytestmark = pytest.mark.django_db


def test_seed_prints_a_working_admin_password_and_participant_link(client, capsys):
    call_command("seed_demo", base_url="http://127.0.0.1:8000")
    output = capsys.readouterr().out
    password = re.search(r"Password:\s+(\S+)", output).group(1)
    link = re.search(r"Participant link:\s+http://127.0.0.1:8000(\S+)", output).group(1)

    assert client.login(username="admin", password=password)
    study = Study.objects.get(name="Demo study")
    assert study.status == "live" and study.ads.get().duration_ms == 10_000
    assert client.get(link).status_code == 302


def test_seed_twice_keeps_one_study_and_rotates_the_password(capsys):
    call_command("seed_demo")
    call_command("seed_demo")
    passwords = re.findall(r"Password:\s+(\S+)", capsys.readouterr().out)
    assert Study.objects.filter(name="Demo study").count() == 1
    assert len(set(passwords)) == 2


def test_the_seed_command_prints_no_opencv_notice(postgres, redis_url):
    """As `make run` runs it: a process of its own, so OpenCV's FFmpeg writes to the real stderr."""
    result = subprocess.run(
        [sys.executable, "manage.py", "seed_demo", "--base-url", "http://127.0.0.1:8000"],
        cwd=REPO_ROOT,
        env=service_env(postgres, redis_url),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Demo ready." in result.stdout
    assert "OpenCV" not in result.stderr and "not supported" not in result.stderr, result.stderr
    study = Study.objects.get(name="Demo study")
    assert study.ads.get().duration_ms == 10_000  # the notice went, the VP8 video did not
