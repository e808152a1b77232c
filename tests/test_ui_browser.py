"""The upload page (GET /ui) and the API docs page (GET /), driven in headless Chromium.

Debian's chromium (installed when missing) is launched by Playwright by its path, against the real
`imgcls serve`. Every request that does not go to the loopback server is aborted and recorded: the
pages must work offline. The page's labels and percentages must equal the API's own answer for the
same files; a non-image shows its error in words. The test saves docs/ui.png (the README shows it).
"""
from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image

from imgcls.service.host.launcher import start_server
from tests.conftest import REPO_ROOT, encode
from tests.factories import class_image, make_tiny_bundle
from tests.system_tools import require

pytestmark = pytest.mark.slow
SCREENSHOT = REPO_ROOT / "docs" / "ui.png"
LOCAL_HOSTS = {"127.0.0.1", "localhost"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    bundle = make_tiny_bundle(tmp_path_factory.mktemp("ui-bundle"))
    handle = start_server(bundle, tmp_path_factory.mktemp("ui-log") / "serve.log", env={"IMGCLS_WORKERS": "1"})
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def uploads(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("ui-images")
    rng = np.random.default_rng(3)
    paths = []
    for index, name in enumerate(["red-ish.png", "green-ish.jpg"]):
        image: Image.Image = class_image(index, (160, 120), rng)
        path = folder / name
        path.write_bytes(encode(image, "PNG" if name.endswith(".png") else "JPEG"))
        paths.append(path)
    notes = folder / "notes.txt"
    notes.write_text("this is not an image\n")
    return [*paths, notes]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    executable = require("chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True,
                                              args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    """A page whose every non-loopback request is aborted; ``page.blocked`` lists them."""
    context = browser.new_context(viewport={"width": 980, "height": 760}, device_scale_factor=1)
    page = context.new_page()
    page.blocked = []

    def guard(route):
        if urlsplit(route.request.url).hostname in LOCAL_HOSTS:
            route.continue_()
        else:
            page.blocked.append(route.request.url)
            route.abort()

    context.route("**/*", guard)
    yield page
    context.close()


def api_answer(server, uploads: list[Path], top_k: int, min_score: str | None = None) -> dict:
    """The answer to the multipart form the page sends (``min_score`` a text field, as the page sends it)."""
    files = [("images", (p.name, p.read_bytes(), "application/octet-stream")) for p in uploads]
    fields = {"top_k": str(top_k), **({"min_score": min_score} if min_score is not None else {})}
    response = httpx.post(server.url + "/classify", files=files, data=fields, timeout=30, trust_env=False)
    assert response.status_code == 200, response.text
    return response.json()


def shown(page) -> dict[str, list[tuple[str, str]]]:
    """filename -> [(label, percentage text)] as the page shows them."""
    result = {}
    for item in page.locator(".result").all():
        bars = item.locator(".bar").all()
        result[item.get_attribute("data-name")] = [(b.locator(".label").inner_text(), b.locator(".pct").inner_text())
                                                   for b in bars]
    return result


def test_upload_page_shows_the_apis_answer_and_errors(server, uploads, page):
    page.goto(server.url + "/ui")
    model = httpx.get(server.url + "/model", trust_env=False).json()
    page.locator("#model").filter(has_text=model["version"]).wait_for(timeout=15_000)
    assert model["precision"] in page.locator("#model").inner_text()

    page.locator("#files").set_input_files([str(p) for p in uploads])  # choosing files submits them
    page.locator("#status").filter(has_text="Done").wait_for(timeout=30_000)

    answer = api_answer(server, uploads, top_k=3)
    on_page = shown(page)
    assert len(on_page) == 3
    for result in answer["results"]:
        name = result["filename"]
        if result.get("error"):
            assert on_page[name] == []
            error = page.locator(f'.result[data-name="{name}"] .error').inner_text()
            assert result["error"]["message"] in error and result["error"]["reason"] in error
        else:
            assert on_page[name] == [(p["label"], f"{p['score'] * 100:.1f}%") for p in result["predictions"]]
    assert sum(1 for r in answer["results"] if r.get("error")) == 1  # the text file, and only it
    assert "Done: 2 classified, 1 not classified" in page.locator("#status").inner_text()

    curl = page.locator("#curl").input_value()
    assert "-F 'images=@red-ish.png'" in curl and "top_k=3" in curl and curl.endswith(server.url + "/classify")
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.stat().st_size > 10_000
    assert page.blocked == []



def threshold_between(server, images: list[Path]) -> str:
    """A min_score strictly between the two images' top-1 scores: one abstains, the other does not."""
    low, high = sorted(r["predictions"][0]["score"] for r in api_answer(server, images, top_k=1)["results"])
    threshold = f"{(low + high) / 2:.6f}"
    assert low < float(threshold) < high, (low, high)
    return threshold


def test_min_score_form_field_marks_abstained_images(server, uploads):
    """What the page relies on: the multipart field min_score, echoed, and each image's abstained flag."""
    threshold = threshold_between(server, uploads[:2])
    answer = api_answer(server, uploads, top_k=2, min_score=threshold)
    assert answer["min_score"] == float(threshold)
    flags = {r["filename"]: r.get("abstained") for r in answer["results"]}
    assert flags == {"red-ish.png": flags["red-ish.png"], "green-ish.jpg": not flags["red-ish.png"],
                     "notes.txt": None}  # one of the two images abstains; the text file has an error instead
    for result in answer["results"]:
        if not result.get("error"):
            assert result["abstained"] == (result["predictions"][0]["score"] < float(threshold))
    assert "min_score" not in api_answer(server, uploads[:1], top_k=1)  # no card default: no threshold
    assert httpx.get(server.url + "/model", trust_env=False).json()["calibration"].get("min_score") is None


def test_upload_page_marks_abstained_images_and_counts_them_apart(server, uploads, page):
    images = uploads[:2]
    threshold = threshold_between(server, images)
    page.goto(server.url + "/ui")
    page.locator("#minscore-default").filter(has_text="never abstains").wait_for(timeout=15_000)
    page.get_by_label("Abstain below").fill(threshold)
    page.locator("#files").set_input_files([str(p) for p in images])
    page.locator("#status").filter(has_text="Done").wait_for(timeout=30_000)

    answer = api_answer(server, images, top_k=3, min_score=threshold)
    for result in answer["results"]:
        item = page.locator(f'.result[data-name="{result["filename"]}"]')
        top = f"{result['predictions'][0]['score'] * 100:.1f}%"
        if result["abstained"]:
            assert "abstained" in item.get_attribute("class")
            assert item.locator(".unsure").inner_text() == f"Not sure: the top score {top} is below min_score {threshold}"
        else:
            assert "abstained" not in item.get_attribute("class") and item.locator(".unsure").count() == 0
        assert item.locator(".bar .pct").first.inner_text() == top  # the scores are still shown
    status = page.locator("#status").inner_text()
    assert f"Done: 1 classified, 1 abstained (top score below min_score {threshold}), 0 not classified" in status
    assert f"-F min_score={threshold} " in page.locator("#curl").input_value()
    assert page.blocked == []

def test_upload_page_is_keyboard_usable_and_fits_a_phone(server, page):
    page.set_viewport_size({"width": 375, "height": 740})
    page.goto(server.url + "/ui")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "files"  # the first stop: choose files
    for control in ("Labels per image", "Abstain below", "curl command"):
        assert page.get_by_label(control).count() == 1
    assert page.locator("#files").evaluate("e => e.labels.length") == 1
    page.locator("#submit").click()  # nothing chosen: said in words, focus back on the file picker
    assert "Choose at least one image" in page.locator("#status").inner_text()
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    assert page.blocked == []


def test_docs_page_is_imgcls_swagger_offline(server, page):
    page.goto(server.url + "/")
    title = page.locator(".info .title")
    title.wait_for(timeout=20_000)
    assert "imgcls image classification" in title.inner_text()
    assert page.title() == "imgcls API"
    assert page.locator('a[href="/ui"]').count() >= 1
    page.locator(".opblock-summary-path", has_text="/classify").first.wait_for()
    assert "BentoML" not in page.locator(".info").inner_text()
    assert page.blocked == []


def test_the_model_picker_chooses_which_model_answers(tmp_path_factory, uploads, page):
    """Two bundles: the page offers both, describes the one picked, and its answers come from that model."""
    root = tmp_path_factory.mktemp("ui-two")
    first, second = (make_tiny_bundle(root / f"s{seed}", seed=seed) for seed in (0, 1))
    renamed = [first.rename(first.parent / "first"), second.rename(second.parent / "second")]
    handle = start_server(renamed, root / "serve.log", env={"IMGCLS_WORKERS": "1"})
    try:
        page.goto(handle.url + "/ui")
        page.locator("#modelpick-row").wait_for(state="visible", timeout=15_000)
        assert page.locator("#modelpick option").all_inner_texts() == ["first", "second"]
        page.locator("#modelpick").select_option("second")
        versions = {m["name"]: m["version"] for m in httpx.get(handle.url + "/models", trust_env=False).json()["models"]}
        page.locator("#model").filter(has_text=versions["second"]).wait_for(timeout=5_000)
        assert "model=second" in page.locator("#curl").input_value()
        with page.expect_response(lambda r: r.url.endswith("/classify")) as answer:
            page.locator("#files").set_input_files([str(uploads[0])])
        assert answer.value.json()["model"]["version"] == versions["second"]
        page.locator("#status").filter(has_text="Done").wait_for(timeout=30_000)
        assert page.blocked == []
    finally:
        handle.stop()


def test_the_page_asks_for_an_api_key_when_the_server_needs_one(tmp_path_factory, uploads, page):
    """With --api-keys-file the page stays reachable, asks for a key and sends it as a Bearer token."""
    root = tmp_path_factory.mktemp("ui-keys")
    keys = root / "keys.txt"
    keys.write_text("page-key-5150\n")
    handle = start_server(make_tiny_bundle(root), root / "serve.log", args=["--api-keys-file", str(keys)],
                          env={"IMGCLS_WORKERS": "1"})
    try:
        page.goto(handle.url + "/ui")
        page.locator("#key-row").wait_for(state="visible", timeout=15_000)
        assert "API key" in page.locator("#model").inner_text()
        assert "$IMGCLS_API_KEY" in page.locator("#curl").input_value()  # the command names the key, never holds it
        page.locator("#apikey").fill("page-key-5150")
        page.locator("#apikey").dispatch_event("change")
        page.locator("#model").filter(has_text="version").wait_for(timeout=15_000)
        with page.expect_response(lambda r: r.url.endswith("/classify")) as answer:
            page.locator("#files").set_input_files([str(uploads[0])])
        assert answer.value.status == 200
        assert "page-key-5150" not in page.locator("#curl").input_value()
    finally:
        handle.stop()
