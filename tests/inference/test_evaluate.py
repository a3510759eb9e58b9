"""`inference.training.evaluate.evaluate_model` and `inference.training.real_faces`: the shape of what they
report for any output (7 labels, 8 labels, either head of a two-output file), checked against the data, not
against accuracy figures."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from inference.model import EmotionModel, ModelContractError
from tests.support.services import require_file
from tests.support.shared_subset import SUBSET_FPS, SUBSET_FRAMES, SUBSET_PHOTOS

from .conftest import (
    EIGHT_LABELS,
    FER2013_LABELS,
    FERPLUS_LABELS,
    SHUFFLED_LABELS,
    build_contract_model,
)
from .evaluation_contract import HAPPY_KEYS, assert_real_faces, assert_report, ferplus_majority_counts

pytest.importorskip("inference.training.evaluate")

from inference.training import FER_LABELS, HEAD_OUTPUTS  # noqa: E402
from inference.training import FERPLUS_LABELS as TRAINING_FERPLUS_LABELS  # noqa: E402
from inference.training.data import PRIVATE, PUBLIC, FerData, load_data  # noqa: E402
from inference.training.evaluate import evaluate_model  # noqa: E402
from inference.training.real_faces import (  # noqa: E402
    PHOTOS_DIR,
    RELAXED_SECONDS,
    VIDEO_FILE,
    evaluate_real_faces,
    photo_crops,
    video_jpegs,
)

SECOND = "ferplus_probabilities"


# --- evaluate_model -----------------------------------------------------------------------------------------


def test_the_training_label_sets_use_fer2013s_names() -> None:
    assert FER_LABELS == tuple(FER2013_LABELS)
    assert TRAINING_FERPLUS_LABELS == tuple(FERPLUS_LABELS)
    assert set(FER_LABELS) < set(TRAINING_FERPLUS_LABELS)  # "happy" is "happy" whichever head is read
    assert HEAD_OUTPUTS == {"probabilities": FER_LABELS, "ferplus_probabilities": TRAINING_FERPLUS_LABELS}


@pytest.fixture(scope="module")
def small_fer(shared: Path) -> FerData:
    """600 PrivateTest and 300 PublicTest rows of the real FER2013 + FER+ data (fast to evaluate)."""
    require_file(shared / "data" / "fer2013.npz", "FER2013")
    require_file(shared / "data" / "ferplus_votes.npz", "FER+ votes")
    data = load_data(shared / "data")
    rows = np.concatenate([data.split(PRIVATE)[:600], data.split(PUBLIC)[:300]])
    return FerData(data.images[rows], data.labels[rows], data.usage[rows], data.votes[rows])


def _counts(data: FerData, split: int = PRIVATE) -> tuple[np.ndarray, np.ndarray]:
    rows = data.split(split)
    return np.bincount(data.labels[rows], minlength=7), ferplus_majority_counts(data.votes[rows])


def test_a_seven_label_output(contract_model_path: Path, small_fer: FerData) -> None:
    report = evaluate_model(contract_model_path, data=small_fer, speed=False)
    fer_counts, ferplus_counts = _counts(small_fer)
    assert report["model"] == str(contract_model_path) and report["version"] == "contract-test-1"
    assert_report(
        report,
        output="probabilities",
        labels=SHUFFLED_LABELS,
        fer_counts=fer_counts,
        ferplus_counts=ferplus_counts,
    )
    assert report["fer2013"]["n"] == 600
    assert report["ferplus"]["classes_not_in_output"] == ["contempt"]  # FER+ has a class this output lacks
    assert "classes_not_in_output" not in report["fer2013"]


def test_an_eight_label_output(eight_label_model_path: Path, small_fer: FerData) -> None:
    report = evaluate_model(eight_label_model_path, data=small_fer, speed=False)
    fer_counts, ferplus_counts = _counts(small_fer)
    assert_report(
        report,
        output="probabilities",
        labels=EIGHT_LABELS,
        fer_counts=fer_counts,
        ferplus_counts=ferplus_counts,
    )
    # every dataset class is in the output: calibration on both, no class reported missing
    assert {"ece", "nll"} <= set(report["fer2013"]) and {"ece", "nll"} <= set(report["ferplus"])


def test_either_output_of_a_two_output_model(two_head_model_path: Path, small_fer: FerData) -> None:
    default = evaluate_model(two_head_model_path, data=small_fer, speed=False)
    second = evaluate_model(two_head_model_path, data=small_fer, speed=False, output=SECOND)
    fer_counts, ferplus_counts = _counts(small_fer)
    counts = {"fer_counts": fer_counts, "ferplus_counts": ferplus_counts}
    assert_report(default, output="probabilities", labels=SHUFFLED_LABELS, **counts)
    assert_report(second, output=SECOND, labels=FERPLUS_LABELS, **counts)
    assert default["version"] == second["version"] == "two-heads-test-1"
    # The heads are different functions of the crop: their confusion matrices differ.
    assert default["fer2013"]["confusion_matrix"] != second["fer2013"]["confusion_matrix"]
    with pytest.raises(ModelContractError, match="nosuch"):
        evaluate_model(two_head_model_path, data=small_fer, speed=False, output="nosuch")


def test_the_label_order_does_not_change_the_figures(
    contract_model_path: Path, small_fer: FerData, tmp_path: Path
) -> None:
    """The SHUFFLED_LABELS contract model, rebuilt with its labels in FER2013's order: same function per
    label name, so the same figures, matched by name whatever the column order."""
    weights = {label: 0.0 for label in FER2013_LABELS} | {"happy": 3.0, "sad": -3.0}
    fer_ordered = build_contract_model(
        tmp_path / "fer_ordered.onnx",
        FER2013_LABELS,
        [weights[label] for label in FER2013_LABELS],
        [0.1 * i for i in range(7)],
    )
    shuffled = evaluate_model(contract_model_path, data=small_fer, speed=False)
    ordered = evaluate_model(fer_ordered, data=small_fer, speed=False)
    assert ordered["labels"] == FER2013_LABELS and shuffled["labels"] == SHUFFLED_LABELS
    for section in ("fer2013", "ferplus"):
        assert shuffled[section]["confusion_matrix"] == ordered[section]["confusion_matrix"]
        for key in ("accuracy", "macro_f1", "happy_vs_rest_accuracy", "happy_vs_rest_auc"):
            assert shuffled[section][key] == pytest.approx(ordered[section][key], abs=1e-6)


def test_an_output_without_happy_has_no_happy_vs_rest(tmp_path: Path, small_fer: FerData) -> None:
    labels = ["neutral", "sad", "angry"]
    path = build_contract_model(tmp_path / "three.onnx", labels, [1.0, -1.0, 0.5], [0.0, 0.1, 0.2])
    report = evaluate_model(path, data=small_fer, speed=False)
    assert_report(report, output="probabilities", labels=labels)
    assert report["fer2013"]["classes_not_in_output"] == ["disgust", "fear", "happy", "surprise"]
    assert not HAPPY_KEYS & set(report["fer2013"]) and not HAPPY_KEYS & set(report["ferplus"])


def test_another_split(contract_model_path: Path, small_fer: FerData) -> None:
    report = evaluate_model(contract_model_path, data=small_fer, split=PUBLIC, speed=False)
    fer_counts, ferplus_counts = _counts(small_fer, PUBLIC)
    assert_report(
        report,
        output="probabilities",
        labels=SHUFFLED_LABELS,
        split="PublicTest",
        fer_counts=fer_counts,
        ferplus_counts=ferplus_counts,
    )
    assert report["fer2013"]["n"] == 300


# --- real faces ---------------------------------------------------------------------------------------------

MINI_PHOTOS, MINI_FPS, MINI_FRAMES = SUBSET_PHOTOS, SUBSET_FPS, SUBSET_FRAMES


def test_real_faces_of_an_eight_label_output(
    eight_label_model_path: Path, shared_subset: Path, yunet_path: Path
) -> None:
    real = evaluate_real_faces(eight_label_model_path, shared_subset, detector_path=yunet_path)
    assert_real_faces(real, output="probabilities", labels=EIGHT_LABELS, valence=True, photos=2 * MINI_PHOTOS)
    assert real["detector"] == "yunet"
    video = real["video"]
    assert video["frames"] == MINI_FRAMES and video["fps"] == pytest.approx(MINI_FPS)
    assert video["relaxed_seconds"] == RELAXED_SECONDS
    assert video["all"]["frames"] > 0


def test_real_faces_read_the_output_they_are_told_to(
    two_head_model_path: Path, shared_subset: Path, yunet_path: Path
) -> None:
    default = evaluate_real_faces(two_head_model_path, shared_subset, detector_path=yunet_path)
    second = evaluate_real_faces(two_head_model_path, shared_subset, output=SECOND, detector_path=yunet_path)
    assert_real_faces(default, output="probabilities", labels=SHUFFLED_LABELS, valence=True)
    assert_real_faces(second, output=SECOND, labels=FERPLUS_LABELS, valence=True)
    # same faces found whichever output is read
    for name in ("happy", "neutral"):
        assert (
            default["photos"]["classes"][name]["face_found"]
            == second["photos"]["classes"][name]["face_found"]
        )
    assert default["video"]["all"]["frames"] == second["video"]["all"]["frames"]
    with pytest.raises(ModelContractError, match="nosuch"):
        evaluate_real_faces(two_head_model_path, shared_subset, output="nosuch", detector_path=yunet_path)


def test_real_faces_without_valence_weights(
    contract_model_path: Path, shared_subset: Path, yunet_path: Path
) -> None:
    real = evaluate_real_faces(contract_model_path, shared_subset, detector_path=yunet_path)
    assert_real_faces(real, output="probabilities", labels=SHUFFLED_LABELS, valence=False)


def test_a_missing_set_is_reported_not_raised(contract_model_path: Path, tmp_path: Path) -> None:
    real = evaluate_real_faces(contract_model_path, tmp_path, detector_path="haar")
    assert real["labels"] == SHUFFLED_LABELS and real["output"] == "probabilities"
    assert real["detector"] == "haar"
    for section in ("photos", "video"):
        assert real[section]["available"] is False and real[section]["reason"]
        assert set(real[section]) == {"available", "reason"}


def test_sets_without_faces_give_nulls_not_errors(
    contract_model_path: Path, tmp_path: Path, yunet_path: Path
) -> None:
    photos = tmp_path / PHOTOS_DIR
    photos.mkdir(parents=True)
    cv2.imwrite(str(photos / "blank.jpg"), np.zeros((100, 100, 3), np.uint8))
    (photos / "labels.csv").write_text("filename,label\nblank.jpg,happy\nblank.jpg,neutral\n")
    (tmp_path / VIDEO_FILE).parent.mkdir(parents=True)
    writer = cv2.VideoWriter(str(tmp_path / VIDEO_FILE), cv2.VideoWriter_fourcc(*"mp4v"), MINI_FPS, (64, 64))
    for _ in range(5):
        writer.write(np.zeros((64, 64, 3), np.uint8))
    writer.release()
    real = evaluate_real_faces(contract_model_path, tmp_path, detector_path=yunet_path)
    assert real["photos"]["n"] == 2 and real["photos"]["face_found_rate"] == 0
    assert real["photos"]["balanced_recall"] is None
    for entry in real["photos"]["classes"].values():
        assert entry["face_found"] == 0 and entry["recall"] is None and entry["mean_smile"] is None
        assert entry["confusion_row"] == dict.fromkeys(SHUFFLED_LABELS, 0)
    video = real["video"]
    assert video["frames"] == 5 and video["face_found_rate"] == 0
    for part in ("all", "relaxed", "rest"):
        assert video[part]["frames"] == 0 and list(video[part]["dominant_share"]) == SHUFFLED_LABELS
        assert video[part]["mean_smile"] is None


def test_photo_crops_are_the_pipelines_crops(
    contract_model_path: Path, shared_subset: Path, yunet_path: Path
) -> None:
    from inference.pipeline import Pipeline

    pipeline = Pipeline(contract_model_path, yunet_path)
    crops, labels = photo_crops(pipeline, shared_subset / PHOTOS_DIR)
    size = pipeline.model.input_size
    assert crops.dtype == np.uint8 and crops.shape[1:] == (size, size)
    assert len(crops) == len(labels) and 0 < len(labels) <= 2 * MINI_PHOTOS
    assert set(labels) <= {"happy", "neutral"}
    assert EmotionModel(contract_model_path).predict(crops).shape == (len(crops), 7)


def test_video_jpegs_are_what_a_browser_sends(shared_subset: Path) -> None:
    blobs, fps = video_jpegs(shared_subset / VIDEO_FILE)
    assert len(blobs) == MINI_FRAMES and fps == pytest.approx(MINI_FPS)
    assert all(blob[:2] == b"\xff\xd8" for blob in blobs)
    assert cv2.imdecode(np.frombuffer(blobs[0], np.uint8), cv2.IMREAD_COLOR) is not None
