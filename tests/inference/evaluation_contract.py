"""What `evaluate_model` and `evaluate_real_faces` report, and so what `python -m inference evaluate --json`
prints: shape checks shared by test_evaluate.py and test_inference_cli.py (numpy and pytest only, so that
importing them never needs the training evaluator)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from .conftest import FER2013_LABELS, FERPLUS_LABELS

REPORT_KEYS = {"model", "version", "output", "labels", "split", "fer2013", "ferplus", "size_bytes"}
SECTION_KEYS = {"accuracy", "macro_f1", "per_class_recall", "confusion_labels", "confusion_matrix", "n"}
HAPPY_KEYS = {"happy_vs_rest_accuracy", "happy_vs_rest_auc"}


def ferplus_majority_counts(votes: np.ndarray) -> np.ndarray:
    """Rows per FER+ majority class (8 emotions); rows won by unknown/NF or without votes are not counted."""
    winner = votes.argmax(axis=1)
    valid = (winner < 8) & (votes.sum(axis=1) > 0)
    return np.bincount(winner[valid], minlength=8)


def assert_section(
    section: dict[str, Any], classes: list[str], labels: list[str], counts: np.ndarray | None = None
) -> None:
    """One of `fer2013` / `ferplus`: metrics of an output (`labels`) against a dataset's `classes`."""
    missing = [name for name in classes if name not in labels]
    expected_keys = SECTION_KEYS | ({"classes_not_in_output"} if missing else {"ece", "nll"})
    if "happy" in labels:
        expected_keys |= HAPPY_KEYS
    assert set(section) == expected_keys
    assert section["confusion_labels"] == classes
    if missing:
        assert section["classes_not_in_output"] == missing
    else:
        assert 0 <= section["ece"] <= 1 and section["nll"] >= 0
    k, n = len(classes), section["n"]
    matrix = np.array(section["confusion_matrix"])
    assert matrix.shape == (k, k) and matrix.sum() == n > 0
    if counts is not None:
        np.testing.assert_array_equal(matrix.sum(axis=1), counts)  # rows = true class
    assert 0 <= section["accuracy"] <= 1 and 0 <= section["macro_f1"] <= 1
    assert section["accuracy"] == pytest.approx(np.trace(matrix) / n, abs=1e-9)
    assert list(section["per_class_recall"]) == classes
    for index, name in enumerate(classes):
        row = matrix[index]
        recall = row[index] / row.sum() if row.sum() else 0.0
        assert section["per_class_recall"][name] == pytest.approx(recall, abs=1e-9)
    for name in missing:  # a class the output lacks is never predicted (columns = predicted)
        assert matrix[:, classes.index(name)].sum() == 0
    if "happy" in labels:
        assert 0 <= section["happy_vs_rest_accuracy"] <= 1 and 0 <= section["happy_vs_rest_auc"] <= 1


def assert_report(
    report: dict[str, Any],
    *,
    output: str,
    labels: list[str],
    split: str = "PrivateTest",
    speed: bool = False,
    fer_counts: np.ndarray | None = None,
    ferplus_counts: np.ndarray | None = None,
) -> None:
    """What `evaluate_model` returns (and `python -m inference evaluate --json` prints, real_faces aside)."""
    keys = REPORT_KEYS | ({"cpu_crops_per_s_b32_1thread"} if speed else set())
    assert set(report) - {"real_faces", "protocol"} == keys
    assert report["output"] == output and report["labels"] == labels
    assert report["split"] == split and report["version"] and report["size_bytes"] > 0
    assert_section(report["fer2013"], FER2013_LABELS, labels, fer_counts)
    assert_section(report["ferplus"], FERPLUS_LABELS, labels, ferplus_counts)
    if speed:
        assert report["cpu_crops_per_s_b32_1thread"] > 0


def assert_part(part: dict[str, Any], labels: list[str], valence: bool) -> None:
    assert set(part) == {"frames", "dominant_share", "mean_valence", "mean_smile"}
    assert list(part["dominant_share"]) == labels
    if part["frames"]:
        assert sum(part["dominant_share"].values()) == pytest.approx(1.0)
        assert 0 <= part["mean_smile"] <= 1 if "happy" in labels else part["mean_smile"] is None
        assert (part["mean_valence"] is not None) == valence


def assert_real_faces(
    real: dict[str, Any], *, output: str, labels: list[str], valence: bool, photos: int | None = None
) -> None:
    """The `real_faces` section: photos (labelled happy/neutral) and the video, read by one output."""
    assert set(real) == {"output", "labels", "detector", "photos", "video"}
    assert real["output"] == output and real["labels"] == labels and real["detector"]
    set_ = real["photos"]
    assert set(set_) == {
        "set",
        "n",
        "face_found_rate",
        "balanced_recall",
        "mean_p_neutral_on_neutral",
        "classes",
    }
    assert photos is None or set_["n"] == photos
    assert set(set_["classes"]) == {"happy", "neutral"}
    assert sum(entry["n"] for entry in set_["classes"].values()) == set_["n"]
    found = sum(entry["face_found"] for entry in set_["classes"].values())
    assert set_["face_found_rate"] == pytest.approx(found / set_["n"])
    recalls = []
    for name, entry in set_["classes"].items():
        assert set(entry) == {
            "n",
            "face_found",
            "face_found_rate",
            "recall",
            "confusion_row",
            "mean_valence",
            "mean_smile",
            "mean_p_neutral",
        }
        assert 0 < entry["face_found"] <= entry["n"]
        assert entry["face_found_rate"] == pytest.approx(entry["face_found"] / entry["n"])
        assert list(entry["confusion_row"]) == labels  # dominant labels per true label, in the output's order
        assert sum(entry["confusion_row"].values()) == entry["face_found"]
        if name in labels:
            assert entry["recall"] == pytest.approx(entry["confusion_row"][name] / entry["face_found"])
            recalls.append(entry["recall"])
        else:
            assert entry["recall"] is None
        assert (entry["mean_valence"] is not None) == valence
        assert 0 <= entry["mean_smile"] <= 1 if "happy" in labels else entry["mean_smile"] is None
        assert 0 <= entry["mean_p_neutral"] <= 1 if "neutral" in labels else entry["mean_p_neutral"] is None
    assert set_["balanced_recall"] == pytest.approx(np.mean(recalls))
    assert set_["mean_p_neutral_on_neutral"] == set_["classes"]["neutral"]["mean_p_neutral"]

    video = real["video"]
    assert set(video) == {
        "video",
        "frames",
        "fps",
        "face_found_rate",
        "all",
        "relaxed_seconds",
        "relaxed",
        "rest",
    }
    assert video["frames"] > 0 and video["fps"] > 0 and video["relaxed_seconds"] > 0
    assert video["all"]["frames"] == video["relaxed"]["frames"] + video["rest"]["frames"]
    assert video["face_found_rate"] == pytest.approx(video["all"]["frames"] / video["frames"])
    assert video["relaxed"]["frames"] <= round(video["relaxed_seconds"] * video["fps"])
    for part in ("all", "relaxed", "rest"):
        assert_part(video[part], labels, valence)
