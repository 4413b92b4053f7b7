"""Draw detections on a copy of an image (for ``doorface detect --draw`` and debugging)."""

from __future__ import annotations

import cv2
import numpy as np

from edge.faces import Detections

BOX_COLOUR = (0, 220, 0)
# One colour per landmark: eyes, nose, mouth corners.
LANDMARK_COLOURS = ((255, 64, 64), (64, 64, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255))


def draw_detections(rgb: np.ndarray, detections: Detections) -> np.ndarray:
    out = np.ascontiguousarray(rgb.copy())
    thickness = max(1, round(max(out.shape[:2]) / 400))
    for face in detections:
        x1, y1, x2, y2 = (int(round(v)) for v in face.box)
        cv2.rectangle(out, (x1, y1), (x2, y2), BOX_COLOUR, thickness)
        cv2.putText(out, f"{face.score:.2f}", (x1, max(y1 - 4, 10)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4 * thickness, BOX_COLOUR, thickness, cv2.LINE_AA)
        for (x, y), colour in zip(face.landmarks, LANDMARK_COLOURS):
            cv2.circle(out, (int(round(x)), int(round(y))), thickness + 1, colour, -1, cv2.LINE_AA)
    return out
