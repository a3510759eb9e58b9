"""`fetch-detector`: a verified download when it works, a clear message and Haar when it does not."""

from __future__ import annotations

import socket
from pathlib import Path

from inference.detect import fetch_detector
from inference.resources import REPO_ROOT

from .test_inference_cli import run_cli


def closed_local_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens: fails fast and never leaves the machine."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/face_detection_yunet_2023mar.onnx"


def test_offline_fetch_returns_none_and_says_haar_will_be_used(tmp_path: Path) -> None:
    messages: list[str] = []
    destination = tmp_path / "models" / "yunet.onnx"
    assert (
        fetch_detector(url=closed_local_url(), destination=destination, timeout_s=5, log=messages.append)
        is None
    )
    assert not destination.exists()
    assert "Haar" in messages[-1]


def test_offline_cli_exits_zero_with_a_message(tmp_path: Path) -> None:
    result = run_cli("fetch-detector", "--url", closed_local_url(), "--output", str(tmp_path / "y.onnx"))
    assert result.returncode == 0
    assert "Haar" in result.stdout and "Traceback" not in result.stderr


def test_cli_skips_the_download_when_yunet_is_already_configured(yunet_path: Path) -> None:
    result = run_cli(
        "fetch-detector", "--url", closed_local_url(), env={"PORTAL_FACE_DETECTOR": str(yunet_path)}
    )
    assert result.returncode == 0 and "already available" in result.stdout


def test_a_file_with_the_wrong_checksum_is_not_installed(tmp_path: Path) -> None:
    impostor = tmp_path / "impostor.onnx"
    impostor.write_bytes(b"not yunet")
    destination = tmp_path / "out" / "yunet.onnx"
    messages: list[str] = []
    assert fetch_detector(url=impostor.as_uri(), destination=destination, log=messages.append) is None
    assert not destination.exists() and "checksum" in messages[-1]
    assert not list(destination.parent.glob("*.part"))


def test_a_verified_download_is_installed_once(yunet_path: Path, tmp_path: Path) -> None:
    destination = tmp_path / "var" / "models" / "yunet.onnx"
    messages: list[str] = []
    assert (
        fetch_detector(url=yunet_path.as_uri(), destination=destination, log=messages.append) == destination
    )
    assert destination.read_bytes() == yunet_path.read_bytes()
    # Second run: already there and verified, no download attempted (the URL would fail).
    assert fetch_detector(url=closed_local_url(), destination=destination, log=messages.append) == destination
    assert "already present" in messages[-1]


def test_default_destination_is_in_var() -> None:
    from inference.resources import fetched_detector_path

    assert fetched_detector_path().parent == REPO_ROOT / "var" / "models"
