"""Head pose (yaw, pitch) from YuNet's five landmarks, and the per-frame attention decision: the geometry on
landmarks of a generic head turned by known angles, then real frames in the participant capture format:
the shared clip facing the camera attends (upright or rolled), half-profile photographs do not, and a frame
whose face was removed has no face at all."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from inference.align import (
    FRONTAL_NOSE_HEIGHT,
    NOSE_DEPTH_RATIO,
    PITCH_DEPTH_RATIO,
    pose_angles,
)
from inference.attention import PITCH_DOWN_LIMIT, PITCH_UP_LIMIT, YAW_LIMIT, attending_faces
from inference.detect import Detection
from inference.pipeline import HAAR, Pipeline
from tests.support.services import require_file

# ---- geometry ---------------------------------------------------------------------------------------------

EYE_DISTANCE = 60.0
EYE_TO_MOUTH = NOSE_DEPTH_RATIO * EYE_DISTANCE / PITCH_DEPTH_RATIO  # one head model for yaw and pitch


def head_landmarks(yaw: float, pitch: float, roll: float = 0.0) -> Detection:
    """YuNet's five points of a generic head (eyes, nose tip in front of the face plane, mouth corners) that
    nods by `pitch` (+ = up), turns by `yaw` (+ = nose towards image right) and rolls, in that order (as a
    neck moves a head), projected orthographically."""
    depth = NOSE_DEPTH_RATIO * EYE_DISTANCE
    half = EYE_DISTANCE / 2
    # x to image right, y down, z towards the camera; the eye midpoint at the origin.
    points = np.array(
        [
            [-half, 0.0, 0.0],
            [half, 0.0, 0.0],
            [0.0, FRONTAL_NOSE_HEIGHT * EYE_TO_MOUTH, depth],
            [-0.4 * EYE_DISTANCE, EYE_TO_MOUTH, 0.0],
            [0.4 * EYE_DISTANCE, EYE_TO_MOUTH, 0.0],
        ]
    )
    a, b, c = np.radians([yaw, pitch, roll])
    turn = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    tilt = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    spin = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    projected = (points @ (spin @ turn @ tilt).T)[:, :2] + [160.0, 120.0]
    return Detection((100, 60, 120, 140), 0.9, projected.astype(np.float32))


@pytest.mark.parametrize(
    ("yaw", "pitch"), [(0, 0), (20, 0), (-40, 0), (0, 15), (0, -35), (0, 25), (35, -20), (-25, 15)]
)
def test_pose_recovers_the_turns_of_the_head_model(yaw: float, pitch: float) -> None:
    estimated_yaw, estimated_pitch = pose_angles([head_landmarks(yaw, pitch)])
    assert estimated_yaw[0] == pytest.approx(yaw, abs=0.01)
    assert estimated_pitch[0] == pytest.approx(pitch, abs=0.01)


def test_pose_ignores_roll() -> None:
    yaw, pitch = pose_angles([head_landmarks(25, -15), head_landmarks(25, -15, roll=30)])
    assert yaw == pytest.approx([25, 25], abs=0.01) and pitch == pytest.approx([-15, -15], abs=0.01)
    yaw, pitch = pose_angles([head_landmarks(-20, 0), head_landmarks(0, -10)])
    assert yaw == pytest.approx([-20, 0], abs=0.01) and pitch == pytest.approx([0, -10], abs=0.01)


def test_attending_limits_and_haar_faces_without_a_pose() -> None:
    cases = {
        (0, 0): 1.0,
        (YAW_LIMIT - 1, 0): 1.0,
        (-(YAW_LIMIT + 1), 0): 0.0,
        (0, PITCH_DOWN_LIMIT + 1): 1.0,
        (0, PITCH_DOWN_LIMIT - 1): 0.0,
        (0, PITCH_UP_LIMIT + 1): 0.0,
        (0, PITCH_UP_LIMIT - 1): 1.0,
    }
    poses = [head_landmarks(yaw, pitch) for yaw, pitch in cases]
    haar = Detection((100, 60, 120, 140), 0.9)
    yaw, pitch = pose_angles([*poses, haar])
    decided = attending_faces(yaw, pitch)
    assert decided[:-1].tolist() == list(cases.values())
    assert np.isnan(yaw[-1]) and np.isnan(pitch[-1]) and np.isnan(decided[-1])


# ---- real frames in the participant capture format --------------------------------------------------------

TURNED_PHOTOS = (  # realfaces_dev photographs of visibly turned heads (half-profiles)
    "Dileep_64.jpg",
    "HrithikRoshan_221.jpg",
    "Alberto_Ruiz_Gallardon_0002.jpg",
    "KatrinaKaif_84.jpg",
)


def capture_jpeg(image: np.ndarray, roll: float = 0.0) -> bytes:
    """What capture.js sends: the picture in a 320x240 canvas, JPEG quality 0.8 (rolled first if asked)."""
    if roll:
        height, width = image.shape[:2]
        matrix = cv2.getRotationMatrix2D((width / 2, height / 2), roll, 1.0)
        image = cv2.warpAffine(image, matrix, (width, height), borderMode=cv2.BORDER_REPLICATE)
    canvas = cv2.copyMakeBorder(
        cv2.resize(image, (240, 240)), 0, 0, 40, 40, cv2.BORDER_CONSTANT, value=(40, 40, 40)
    )
    ok, jpeg = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert ok
    return jpeg.tobytes()


@pytest.fixture(scope="module")
def clip_frames(face_video_path: Path) -> list[np.ndarray]:
    """Twelve frames of the shared clip (a woman facing the camera: neutral, frown, surprise)."""
    capture = cv2.VideoCapture(str(face_video_path))
    frames = []
    for index in np.linspace(0, 300, 12).astype(int):
        capture.set(cv2.CAP_PROP_POS_FRAMES, int(index))
        ok, frame = capture.read()
        assert ok
        frames.append(frame)
    capture.release()
    return frames


@pytest.fixture(scope="module")
def pipeline(contract_model_path: Path, yunet_path: Path) -> Pipeline:
    return Pipeline(contract_model_path, yunet_path)


def test_frames_facing_the_camera_attend_upright_and_rolled(pipeline, clip_frames) -> None:
    upright = pipeline.analyze_jpegs([capture_jpeg(frame) for frame in clip_frames])
    faces = [reading.primary_face for reading in upright]
    assert all(face is not None and face.attending for face in faces)
    assert all(abs(face.yaw) < YAW_LIMIT and PITCH_DOWN_LIMIT < face.pitch < PITCH_UP_LIMIT for face in faces)
    # A head tilted sideways still faces the screen (the frames not already turned by 20 degrees or more).
    facing = [frame for frame, face in zip(clip_frames, faces, strict=True) if abs(face.yaw) < 20]
    assert len(facing) >= 10
    for roll in (15, -15):
        rolled = pipeline.analyze_jpegs([capture_jpeg(frame, roll) for frame in facing])
        assert [reading.primary_face.attending for reading in rolled] == [True] * len(facing), roll


def test_turned_heads_do_not_attend(pipeline, shared: Path) -> None:
    folder = shared / "data" / "realfaces_dev" / "images"
    paths = [require_file(folder / name, "realfaces_dev photograph") for name in TURNED_PHOTOS]
    photos = [cv2.imread(str(path)) for path in paths]
    readings = pipeline.analyze_jpegs([capture_jpeg(photo) for photo in photos])
    for name, reading in zip(TURNED_PHOTOS, readings, strict=True):
        face = reading.primary_face
        assert face is not None, name  # found, but turned away
        assert abs(face.yaw) > YAW_LIMIT and face.attending is False, (name, face.yaw)


def test_a_frame_without_the_face_has_no_face_and_haar_faces_have_no_pose(
    pipeline, clip_frames, contract_model_path: Path
) -> None:
    frame = clip_frames[0].copy()
    x, y, w, h = pipeline.detect_faces(frame)[0].box
    background = np.median(frame[:20].reshape(-1, 3), axis=0)
    frame[max(0, y - h // 3) : y + h + h // 3, max(0, x - w // 4) : x + w + w // 4] = background
    assert pipeline.analyze_jpegs([capture_jpeg(frame)])[0].primary_face is None  # stored: not attending
    haar = Pipeline(contract_model_path, HAAR)
    face = haar.analyze_jpegs([capture_jpeg(clip_frames[0])])[0].primary_face
    assert face is not None and face.yaw is None and face.pitch is None and face.attending is None
