"""Is a face turned to the screen? The per-frame attention decision from the head pose (align.pose_angles).

A frame *attends* when a face was found and its estimated head pose lies within these limits (degrees;
yaw positive towards image right, pitch positive up):

    |yaw| <= YAW_LIMIT (30)      PITCH_DOWN_LIMIT (-25) <= pitch <= PITCH_UP_LIMIT (+20)

Why these numbers:
- Yaw. The screen, seen from where a participant sits, spans about +-18 degrees horizontally (a 15" laptop
  at 50 cm) to +-24 degrees (a 24" monitor at 60 cm), and the eyes do part of any gaze shift, so the head
  turns less than that to read the screen's edge: beyond 30 degrees it points beside the screen. The limit
  sits between quality's "frontal" ramp (full up to 25 degrees) and its `not_frontal` warning (35). The
  estimate under-reads (YuNet's landmarks regress towards a frontal face), so the limit errs towards
  "attending". Measured: the shared clip (a woman facing the camera, turning a little) reads -25..+28
  degrees; the realfaces_dev photographs reading 26-29 are visibly turned by ~25-40 degrees, the 53 (of
  1,599) beyond 30 are three-quarter views and half-profiles (half-profiles read 41-55).
- Pitch. Webcams sit above the screen (laptops, monitors, phones), so reading the screen tilts the face
  *down* from the camera: the screen spans ~2-27 degrees below a laptop's camera at 50 cm. Above the camera
  there is no screen; the up limit only leaves room for the estimator. Pitch reads about half of what the
  eye sees: chins visibly lowered by 20-30 degrees read -10..-12 in realfaces_dev (whose 1st-99th
  percentiles are -9..+8), the clip's frames facing the camera read -15..+10 (+10: a wide-open mouth lifts
  the mouth line), its head bowed with closed eyes -20. So -25 on the estimate is a head bowed well below
  the screen (a phone in the lap, a desk), and +20 a face turned up past the ceiling line.
- At webcam sizes pitch is compressed further: in the participant capture format (320x240 JPEG, a ~135 px
  face, ~68 px in YuNet's 160 px input) the clip's pitch reads only -12..+6 (the bowed head -5) while its
  yaw reads -21..+28 as at full size, and half-profiles still read beyond 30. So in the product, attention
  mostly measures faces present and not turned sideways; the pitch limits catch only heads bowed or raised
  much further than the clip shows. Rolling the head by 10-20 degrees moves the webcam-size readings by a
  few degrees (the clip's most turned frame: 27 upright, 29-30 rolled); every frame of the clip attends,
  upright or rolled by 15 degrees either way.
- A head turned away far enough is not detected at all, and a frame without a face never attends.

Without landmarks (the Haar cascade) there is no pose: the decision is None ("unknown"). The rollups count
a face without a pose as attending (docs/analytics.md, "Attention"): Haar's cascade is a *frontal*-face
detector, so finding a face already says it is roughly turned to the camera. Measured on realfaces_dev
(yaw by YuNet's estimate): it finds 92% of the faces under 30 degrees, 65% at 30-40, 38% at 40-50 and none
of the few beyond, so a Haar deployment's attention is looser at the edge than YuNet's, never blind.
"""

from __future__ import annotations

import numpy as np

YAW_LIMIT = 30.0
PITCH_DOWN_LIMIT = -25.0
PITCH_UP_LIMIT = 20.0


def attending_faces(yaw: np.ndarray, pitch: np.ndarray) -> np.ndarray:
    """Per face: 1.0 when its pose is within the limits, 0.0 when not, NaN when unknown (no landmarks)."""
    yaw, pitch = np.asarray(yaw, np.float64), np.asarray(pitch, np.float64)
    with np.errstate(invalid="ignore"):
        within = (np.abs(yaw) <= YAW_LIMIT) & (pitch >= PITCH_DOWN_LIMIT) & (pitch <= PITCH_UP_LIMIT)
    return np.where(np.isfinite(yaw) & np.isfinite(pitch), within.astype(np.float64), np.nan)
