"""`python -m inference`: the JSON contract other tools rely on, and errors without tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from inference import EMOTIONS
from inference.resources import REPO_ROOT

from .conftest import build_contract_model


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "inference", *args],
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def cli_env(contract_model_path: Path, yunet_path: Path) -> dict[str, str]:
    return {"PORTAL_MODEL_PATH": str(contract_model_path), "PORTAL_FACE_DETECTOR": str(yunet_path)}


@pytest.fixture(scope="module")
def face_image(face_frames: list, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("media") / "face.jpg"
    cv2.imwrite(str(path), face_frames[0])
    return path


@pytest.fixture(scope="module")
def short_clip(face_video_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 6 frames of the face video, re-encoded as MJPG/AVI (always writable by OpenCV)."""
    path = tmp_path_factory.mktemp("media") / "clip.avi"
    capture = cv2.VideoCapture(str(face_video_path))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (512, 512))
    for _ in range(6):
        ok, frame = capture.read()
        assert ok
        writer.write(frame)
    writer.release()
    capture.release()
    return path


def assert_face_contract(face: dict) -> None:
    assert set(face) == {"box", "score", "emotions", "dominant"}
    assert len(face["box"]) == 4 and all(isinstance(v, int) for v in face["box"])
    assert list(face["emotions"]) == list(EMOTIONS)
    assert abs(sum(face["emotions"].values()) - 1) < 1e-3
    assert face["dominant"] == max(face["emotions"], key=face["emotions"].get)


def test_analyze_image_prints_one_json_object(cli_env: dict, face_image: Path) -> None:
    result = run_cli("analyze", str(face_image), "--json", env=cli_env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert set(record) == {"file", "faces"} and record["file"] == str(face_image)
    assert len(record["faces"]) == 1
    assert_face_contract(record["faces"][0])


def test_analyze_video_prints_one_object_per_frame(cli_env: dict, short_clip: Path) -> None:
    result = run_cli("analyze", str(short_clip), "--json", env=cli_env)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["frame"] for r in records] == list(range(6))
    assert records[1]["time_ms"] == pytest.approx(1000 / 30, abs=0.01)
    for record in records:
        assert set(record) == {"file", "faces", "frame", "time_ms"}
        assert len(record["faces"]) == 1
        assert_face_contract(record["faces"][0])


def test_unreadable_files_give_error_objects_and_a_failing_exit(
    cli_env: dict, face_image: Path, tmp_path: Path
) -> None:
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not a picture")
    missing = tmp_path / "missing.png"
    result = run_cli("analyze", str(garbage), str(face_image), str(missing), "--json", env=cli_env)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["file"] for r in records] == [str(garbage), str(face_image), str(missing)]
    assert set(records[0]) == {"file", "error"} and set(records[2]) == {"file", "error"}
    assert len(records[1]["faces"]) == 1  # the good file in between is still analysed


def test_missing_model_is_a_clear_error(face_image: Path, tmp_path: Path) -> None:
    result = run_cli(
        "analyze", str(face_image), "--json", env={"PORTAL_MODEL_PATH": str(tmp_path / "none.onnx")}
    )
    assert result.returncode == 2
    assert "model not found" in result.stderr and "Traceback" not in result.stderr


def test_human_readable_output(cli_env: dict, face_image: Path) -> None:
    result = run_cli("analyze", str(face_image), env=cli_env)
    assert result.returncode == 0 and str(face_image) in result.stdout


def assert_evaluation_contract(report: dict, *, speed: bool) -> None:
    """What issue 3 item 2 asks `python -m inference evaluate --json` to print."""
    fer = report["fer2013"]
    assert report["split"] == "PrivateTest" and report["version"]
    assert 0 <= fer["accuracy"] <= 1 and 0 <= fer["macro_f1"] <= 1
    assert set(fer["per_class_recall"]) == set(EMOTIONS)
    assert fer["confusion_labels"] == list(EMOTIONS)
    matrix = fer["confusion_matrix"]
    assert len(matrix) == 7 and all(len(row) == 7 for row in matrix)
    assert sum(map(sum, matrix)) == fer["n"] > 3000
    # The matrix goes through the product loader, the accuracy through the evaluator: they must agree.
    assert abs(sum(matrix[i][i] for i in range(7)) / fer["n"] - fer["accuracy"]) < 1e-3
    for label, row in zip(EMOTIONS, matrix, strict=True):
        assert abs(row[EMOTIONS.index(label)] / max(sum(row), 1) - fer["per_class_recall"][label]) < 1e-3
    assert 0 <= fer["happy_vs_rest_accuracy"] <= 1 and 0 <= fer["happy_vs_rest_auc"] <= 1
    assert 0 <= fer["ece"] <= 1
    assert report["size_bytes"] > 0
    assert "contempt" in report["protocol"]["ferplus"] and "PrivateTest" in report["protocol"]["fer2013"]
    ferplus = report["ferplus"]
    assert ("accuracy" in ferplus and "NF" in ferplus["protocol"]) or ferplus["available"] is False
    assert ("cpu_crops_per_s_b32_1thread" in report) == speed
    if speed:
        assert report["cpu_crops_per_s_b32_1thread"] > 0


@pytest.fixture(scope="module")
def fer_data(shared: Path) -> Path:
    pytest.importorskip("inference.training.evaluate")
    if not (shared / "data" / "fer2013.npz").exists():
        pytest.skip("FER2013 not available")
    return shared / "data"


@pytest.fixture(scope="module")
def fer_ordered_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A contract model whose labels are in FER2013 order (see the xfail test below for why)."""
    return build_contract_model(
        tmp_path_factory.mktemp("models") / "fer_ordered.onnx",
        list(EMOTIONS),
        [0.0, 0.0, 0.0, 3.0, -3.0, 0.0, 0.0],
        [0.1 * i for i in range(7)],
        version="evaluate-test-1",
    )


def test_evaluate_is_wired_to_the_training_evaluator(fer_ordered_model: Path, fer_data: Path) -> None:
    env = {"PORTAL_MODEL_PATH": str(fer_ordered_model)}
    result = run_cli("evaluate", "--json", env=env)  # a tiny model: the speed run is short
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == 1  # --json: one line
    report = json.loads(result.stdout)
    assert report["version"] == "evaluate-test-1"
    assert_evaluation_contract(report, speed=True)
    assert report["ferplus"]["available"] is False  # that model has no FER+ head


def test_evaluate_honours_the_label_order_of_the_metadata(cli_env: dict, fer_data: Path) -> None:
    result = run_cli("evaluate", "--json", "--no-speed", env=cli_env)  # SHUFFLED_LABELS model
    assert result.returncode == 0, result.stderr
    assert_evaluation_contract(json.loads(result.stdout), speed=False)


def test_evaluate_reports_the_shipped_model(real_model_path: Path, fer_data: Path) -> None:
    result = run_cli("evaluate", "--json", "--no-speed", "--model", str(real_model_path))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert_evaluation_contract(report, speed=False)
    assert report["version"] == _metadata(real_model_path)["version"]


def _metadata(path: Path) -> dict[str, str]:
    import onnxruntime as ort

    return dict(ort.InferenceSession(str(path)).get_modelmeta().custom_metadata_map)


def test_bench_writes_its_numbers(cli_env: dict, shared: Path, tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    result = run_cli("bench", "--seconds", "0.2", "--output", str(output), env=cli_env)
    assert result.returncode == 0, result.stdout + result.stderr
    numbers = json.loads(output.read_text())
    assert numbers["classifier"]["batch"] == 32 and numbers["classifier"]["crops_per_s"] > 0
    assert set(numbers["frames"]) == {"640x480", "320x240"}
    frames = numbers["frames"]["640x480"]
    assert frames["frames_per_s"] > 0 and frames["faces_per_frame"] == 1.0
    assert set(frames["stage_ms_per_frame"]) == {"decode", "detect", "align", "classify", "other"}
    assert numbers["setup"]["onnxruntime_intra_op_threads"] == 1 and "frames/s" in result.stdout


def test_evaluate_without_the_training_evaluator_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from inference.cli import main

    monkeypatch.setitem(sys.modules, "inference.training.evaluate", None)  # makes the import fail
    assert main(["evaluate", "--json"]) == 2
    assert "not available" in capsys.readouterr().err
