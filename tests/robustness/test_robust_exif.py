"""EXIF-rotated photos get the same label as the upright photo, through the real server.

The model is EfficientNet-Lite0 with its real ImageNet head (offline weights), the photos are
scikit-image's bundled cat and coffee cup. Each photo is stored in the 8 EXIF orientations (pixels
transposed, tag set so that honouring it gives the upright photo back). A control sends the same
rotated pixels without the tag: its scores must differ, or the test could not tell honoured from ignored.
"""
from __future__ import annotations

import httpx
import pytest

from tests.robustness.bundles import photo
from tests.robustness.corpus import encode, exif_oriented_jpeg, INVERSE_OF_ORIENTATION
from tests.robustness.harness import lite0_bundle, record, start_server

PHOTOS = {"chelsea": "cat", "coffee": "espresso"}  # photo -> a word its ImageNet label must contain
SCORE_TOLERANCE = 0.05  # rotated JPEGs are re-encoded, so scores move a little
QUALITY = 100  # with sizes a multiple of 16 the transposed JPEGs decode to (almost) the same pixels


def aligned(image):
    """Cropped to multiples of 16 so that JPEG blocks cover the same pixels in every orientation."""
    return image.crop((0, 0, image.width // 16 * 16, image.height // 16 * 16))


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    bundle = lite0_bundle(tmp_path_factory)
    server = start_server(bundle, tmp_path_factory.mktemp("exif-log") / "serve.log", ready_timeout=120)
    with httpx.Client(base_url=server.url, timeout=60) as http:
        yield http
    server.stop()


def top(client: httpx.Client, data: bytes) -> tuple[str, float, dict[str, float]]:
    response = client.post("/classify", files=[("images", ("p.jpg", data, "image/jpeg"))], data={"top_k": "5"})
    assert response.status_code == 200, response.text
    predictions = response.json()["results"][0]["predictions"]
    return predictions[0]["label"], predictions[0]["score"], {p["label"]: p["score"] for p in predictions}


def test_rotated_photos_get_the_upright_label(client):
    figures = {}
    for name, word in PHOTOS.items():
        upright = aligned(photo(name))
        label, score, _ = top(client, encode(upright, "JPEG", quality=QUALITY))
        assert word in label.lower(), (name, label)
        rows = {}
        for orientation in range(1, 9):
            got_label, got_score, _ = top(client, exif_oriented_jpeg(upright, orientation, quality=QUALITY))
            rows[str(orientation)] = (got_label, round(got_score, 4))
            assert got_label == label, (name, orientation, got_label, label)
            assert abs(got_score - score) < SCORE_TOLERANCE, (name, orientation, got_score, score)
        # control: the transposed pixels without the tag are seen differently by the model
        moved = []
        for orientation in (5, 6, 7, 8):
            stored = upright.transpose(INVERSE_OF_ORIENTATION[orientation])
            ignored_label, ignored_score, _ = top(client, encode(stored, "JPEG", quality=QUALITY))
            moved.append(ignored_label != label or abs(ignored_score - score) >= SCORE_TOLERANCE)
            rows[f"{orientation} without tag"] = (ignored_label, round(ignored_score, 4))
        assert all(moved), (name, rows)
        figures[name] = {"upright": [label, round(score, 4)], "orientations": rows}
    record("exif", figures)
