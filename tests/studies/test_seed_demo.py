"""`manage.py seed_demo`, run by `make run`: a working admin login, a live study with a playable ad."""

import re

import pytest
from django.core.management import call_command

from research_portal.studies.models import Study

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
