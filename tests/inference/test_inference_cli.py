"""`python -m inference`: the JSON contract other tools rely on, and errors without tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from inference.resources import REPO_ROOT
from tests.support.services import require_file
from tests.support.shared_subset import SUBSET_FRAMES, photo_count

from .conftest import (
    EIGHT_LABELS,
    FER2013_LABELS,
    FERPLUS_LABELS,
    SHUFFLED_LABELS,
    build_contract_model,
)
from .evaluation_contract import assert_real_faces, assert_report, ferplus_majority_counts


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


def assert_face_contract(face: dict, labels: list[str] = SHUFFLED_LABELS) -> None:
    """One face of `analyze --json`; `labels`: the model's, in its order (default: the contract model's)."""
    assert set(face) == {"box", "score", "emotions", "dominant"}
    assert len(face["box"]) == 4 and all(isinstance(v, int) for v in face["box"])
    assert list(face["emotions"]) == labels
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


def test_analyze_emits_all_eight_labels_of_an_eight_label_model(
    eight_label_model_path: Path, yunet_path: Path, face_image: Path, short_clip: Path, tmp_path: Path
) -> None:
    dark = tmp_path / "dark.jpg"  # "contempt" wins on a dark face
    cv2.imwrite(str(dark), (cv2.imread(str(face_image)) // 6).astype(np.uint8))
    env = {"PORTAL_MODEL_PATH": str(eight_label_model_path), "PORTAL_FACE_DETECTOR": str(yunet_path)}
    result = run_cli("analyze", str(face_image), str(dark), str(short_clip), "--json", env=env)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 2 + 6
    for record in records:
        assert len(record["faces"]) == 1
        assert_face_contract(record["faces"][0], EIGHT_LABELS)
    assert records[1]["faces"][0]["dominant"] == "contempt"
    human = run_cli("analyze", str(dark), env=env)
    assert human.returncode == 0 and "contempt" in human.stdout


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


@pytest.fixture(scope="module")
def fer_data(shared: Path) -> Path:
    pytest.importorskip("inference.training.evaluate")
    require_file(shared / "data" / "fer2013.npz", "FER2013")
    require_file(shared / "data" / "ferplus_votes.npz", "FER+ votes")
    return shared / "data"


@pytest.fixture(scope="module")
def private_counts(fer_data: Path) -> dict[str, np.ndarray]:
    """Rows per true class of PrivateTest: FER2013 labels, and FER+ majority labels."""
    with np.load(fer_data / "fer2013.npz") as data:
        private = data["usage"] == "PrivateTest"
        fer = np.bincount(data["labels"][private], minlength=7)
    with np.load(fer_data / "ferplus_votes.npz") as data:
        votes = data["votes"][private]
    return {"fer_counts": fer, "ferplus_counts": ferplus_majority_counts(votes)}


def assert_protocol(report: dict) -> None:
    protocol = report["protocol"]
    assert {"output", "fer2013", "ferplus", "real_faces"} <= set(protocol)
    assert all(isinstance(text, str) and text for text in protocol.values())
    assert "contempt" in protocol["ferplus"] and "PrivateTest" in protocol["fer2013"]


def evaluate_cli(*args: str, env: dict[str, str] | None = None) -> dict:
    result = run_cli("evaluate", "--json", *args, env=env)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == 1  # --json: one line
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def fer_ordered_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A contract model whose labels are in FER2013 order."""
    return build_contract_model(
        tmp_path_factory.mktemp("models") / "fer_ordered.onnx",
        FER2013_LABELS,
        [0.0, 0.0, 0.0, 3.0, -3.0, 0.0, 0.0],
        [0.1 * i for i in range(7)],
        version="evaluate-test-1",
    )


def test_evaluate_is_wired_to_the_training_evaluator(
    fer_ordered_model: Path, fer_data: Path, private_counts: dict
) -> None:
    env = {"PORTAL_MODEL_PATH": str(fer_ordered_model)}
    report = evaluate_cli("--no-real-faces", env=env)  # a tiny model: the speed run is short
    assert report["version"] == "evaluate-test-1" and report["model"] == str(fer_ordered_model)
    assert_report(report, output="probabilities", labels=FER2013_LABELS, speed=True, **private_counts)
    assert report["fer2013"]["n"] == int(private_counts["fer_counts"].sum())
    assert report["ferplus"]["classes_not_in_output"] == ["contempt"]  # a 7-label output lacks contempt
    assert "real_faces" not in report
    assert_protocol(report)


def test_evaluate_honours_the_label_order_and_the_output_of_the_metadata(
    two_head_model_path: Path, fer_data: Path, private_counts: dict
) -> None:
    model = (
        "--model",
        str(two_head_model_path),
        "--no-speed",
        "--no-real-faces",
        "--data-dir",
        str(fer_data),
    )
    default = evaluate_cli(*model)
    second = evaluate_cli(*model, "--output", "ferplus_probabilities")
    assert_report(default, output="probabilities", labels=SHUFFLED_LABELS, **private_counts)
    assert_report(second, output="ferplus_probabilities", labels=FERPLUS_LABELS, **private_counts)
    assert "classes_not_in_output" not in second["ferplus"]  # the 8-label head has every FER+ class
    assert "classes_not_in_output" not in second["fer2013"]


def _shipped_labels(path: Path, output: str | None = None) -> tuple[str, list[str], bool]:
    from inference.model import EmotionModel

    model = EmotionModel(path, output=output)
    return model.output_name, list(model.labels), model.valence_weights is not None


@pytest.mark.parametrize("output", [None, "probabilities"], ids=["default-output", "probabilities"])
def test_evaluate_reports_the_shipped_model(
    real_model_path: Path, fer_data: Path, private_counts: dict, shared_subset: Path, output: str | None
) -> None:
    """The shipped model, its default output or `--output probabilities` (whatever its label set)."""
    name, labels, valence = _shipped_labels(real_model_path, output)
    args = ["--no-speed", "--model", str(real_model_path)] + (["--output", output] if output else [])
    report = evaluate_cli(*args, env={"PORTAL_SHARED_DIR": str(shared_subset)})
    assert_report(report, output=name, labels=labels, **private_counts)
    assert report["version"] == _metadata(real_model_path)["version"]
    assert_real_faces(report["real_faces"], output=name, labels=labels, valence=valence)
    photos = report["real_faces"]["photos"]
    assert photos["n"] == photo_count(shared_subset) and photos["face_found_rate"] > 0.9
    assert report["real_faces"]["video"]["frames"] == SUBSET_FRAMES
    assert_protocol(report)


def test_evaluate_an_unknown_output_is_a_clear_error(real_model_path: Path) -> None:
    pytest.importorskip("inference.training.evaluate")
    result = run_cli(
        "evaluate", "--json", "--no-speed", "--model", str(real_model_path), "--output", "nosuch"
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("error:") and "nosuch" in result.stderr
    assert "Traceback" not in result.stderr


def test_evaluate_a_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    pytest.importorskip("inference.training.evaluate")
    result = run_cli("evaluate", "--json", "--model", str(tmp_path / "none.onnx"))
    assert result.returncode == 2 and "not found" in result.stderr and "Traceback" not in result.stderr


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
