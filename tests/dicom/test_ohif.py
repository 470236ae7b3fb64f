"""What README promises of a SEG, checked where a radiologist would look: OHIF (the prebuilt
viewer of npm's ``@ohif/app``) in headless Chromium opens a study from a real Orthanc, loads
lungseg's SEG over the X-ray, lists both segments and draws both lungs in their colours.

The SEG is made by the project's own writer from the film's hand-drawn mask, so the test needs
no model: what it checks is the file, not the segmentation. One browser session opens every
study; the first study's screenshot is kept as ``docs/dicom/ohif-seg.png``.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from lungseg.dicom.seg import dicom_seg_bytes
from lungseg.models.identity import ModelIdentity
from ohif import DIST, chromium, chromium_missing, ohif_missing, serve

pytestmark = pytest.mark.skipif(ohif_missing() is not None, reason=str(ohif_missing()))
pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")

REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "docs" / "dicom" / "ohif-seg.png"
#: A DX (12 bits, magnified), one stored mirrored (R\F), and a CR whose width is not a multiple
#: of 8 (16 bits); the first one's screenshot is kept.
SHOWN = ("dx-pa-mono2-12bit-magnified", "dx-pa-mono2-12bit-mirrored", "cr-pa-mono2-16bit-width509")
LABELS = ("Right lung", "Left lung")
#: How long OHIF may take on SwiftShader (seconds).
LOAD_S = 90


def seg_of(film) -> bytes:
    """The SEG lungseg writes for ``film``, with its hand-drawn lungs as the mask."""
    identity = ModelIdentity("hand-drawn", "none", "0" * 64, "anatomical")
    return dicom_seg_bytes(film.data, film.mask_stored, identity)


def _body(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


def _wait(driver, condition, what: str, logs: list, seconds: float = LOAD_S):
    """Poll ``condition(driver)`` until it is truthy; fail with what OHIF shows on a timeout or
    as soon as OHIF logs a SEVERE error (a crash leaves a blank page that never recovers)."""
    deadline = time.monotonic() + seconds
    while True:
        found = condition(driver)
        if found:
            return found
        logs.extend(driver.get_log("browser"))
        severe = [entry["message"][:600] for entry in logs if entry["level"] == "SEVERE"]
        if severe or time.monotonic() > deadline:
            raise AssertionError(f"OHIF: no {what}; page: {_body(driver)[:600]!r}; "
                                 f"SEVERE console errors: {severe}")  # fmt: skip
        time.sleep(0.5)


def _colours(seg) -> dict[str, tuple[int, int, int]]:
    """``{segment label: RGB}`` as the SEG recommends them."""
    colours = {}
    for segment in seg.SegmentSequence:
        lab = segment.get("RecommendedDisplayCIELabValue")
        assert lab is not None, f"segment {segment.SegmentLabel!r} has no display colour"
        colours[segment.SegmentLabel] = hd.color.CIELabColor.from_dicom_value(lab).to_rgb()
    return colours


def _overlay(screenshot: bytes, box: dict, colours: dict) -> dict[str, tuple[int, float]]:
    """``{label: (pixels of its colour inside box, their mean x)}`` in a screenshot: a pixel is
    the segment's when its hue is the colour's and it is saturated (the X-ray is grey)."""
    image = cv2.imdecode(np.frombuffer(screenshot, np.uint8), cv2.IMREAD_COLOR)
    x0, y0 = int(box["x"]), int(box["y"])
    crop = image[y0 : y0 + int(box["height"]), x0 : x0 + int(box["width"])]
    hsv = cv2.cvtColor(crop, cv2.COLOR_BGR2HSV).astype(np.int32)
    found = {}
    for label, rgb in colours.items():
        pixel = np.uint8([[rgb[::-1]]])
        hue = int(cv2.cvtColor(pixel, cv2.COLOR_BGR2HSV)[0, 0, 0])
        distance = np.abs(hsv[..., 0] - hue)
        distance = np.minimum(distance, 180 - distance)  # OpenCV's hue is 0..179, a circle
        mine = (distance <= 8) & (hsv[..., 1] >= 90) & (hsv[..., 2] >= 60)
        columns = np.nonzero(mine)[1]
        found[label] = (int(mine.sum()), float(columns.mean()) if columns.size else -1.0)
    return found


def _show(driver, url: str, seg: bytes, logs: list) -> tuple[dict, bytes]:
    """Open the study at ``url``, load its SEG as a person would (double-click the SEG series,
    open the segmentation panel) and wait for both lungs: ``(overlay found, screenshot)``."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    driver.get(url)
    description = pydicom.dcmread(io.BytesIO(seg)).SeriesDescription
    thumbnail = _wait(
        driver,
        lambda d: d.find_elements(By.XPATH, f"//*[text()={description!r}]"),
        f"SEG series {description!r} in the study browser",
        logs,
    )[0]
    _wait(
        driver,
        lambda d: "W:" in d.find_element(By.CSS_SELECTOR, "[data-cy=viewport-pane]").text,
        "X-ray in the viewport",
        logs,
    )
    ActionChains(driver).double_click(thumbnail).perform()
    panel = _wait(
        driver,
        lambda d: d.find_elements(By.CSS_SELECTOR, "[data-cy=panelSegmentation-btn]"),
        "segmentation panel button",
        logs,
    )[0]
    driver.execute_script("arguments[0].click()", panel)
    pane = driver.find_element(By.CSS_SELECTOR, "[data-cy=viewport-pane]")

    def listed(d) -> bool:
        # In the panel: right of the viewport (the study browser is on its left).
        right = pane.rect["x"] + pane.rect["width"]
        return all(
            any(e.rect["x"] >= right for e in d.find_elements(By.XPATH, f"//*[text()={label!r}]"))
            for label in LABELS
        )

    _wait(driver, listed, f"segments {LABELS} in the segmentation panel", logs)
    colours = _colours(pydicom.dcmread(io.BytesIO(seg)))

    def drawn(d):
        found = _overlay(d.get_screenshot_as_png(), pane.rect, colours)
        return found if all(n >= 500 for n, _ in found.values()) else None

    found = _wait(driver, drawn, f"overlay pixels of both colours {colours}", logs)
    return found, driver.get_screenshot_as_png()


def test_one_origin_serves_the_viewer_and_passes_dicomweb_through(orthanc, film_catalogue):
    import http.client

    film = film_catalogue["dx-ap-mono1-16bit-imager"]
    orthanc.stow([film.data])
    study, series = film.header["StudyInstanceUID"], film.header["SeriesInstanceUID"]
    with serve(orthanc.http_port) as web:

        def get(path: str, accept: str = "*/*") -> tuple[int, str, bytes]:
            conn = http.client.HTTPConnection("127.0.0.1", web.server_port, timeout=30)
            try:
                conn.request("GET", path, headers={"Accept": accept})
                response = conn.getresponse()
                return response.status, response.getheader("Content-Type"), response.read()
            finally:
                conn.close()

        status, kind, page = get(f"/viewer?StudyInstanceUIDs={study}")  # OHIF's own route
        assert status == 200 and kind.startswith("text/html") and b"app-config.js" in page
        status, _, config = get("/app-config.js")
        assert b"qidoRoot: '/dicom-web'" in config
        assert get("/../../etc/passwd")[2] == page  # nothing outside dist/
        wasm = next(path.name for path in DIST.glob("*.wasm"))
        assert get(f"/{wasm}")[1] == "application/wasm"  # else WebAssembly refuses to stream it
        status, _, body = get(f"/dicom-web/studies/{study}/series/{series}/metadata",
                              "application/dicom+json")  # fmt: skip
        (instance,) = json.loads(body)
        # Orthanc writes bulk data URLs from the Host header: they come back to this origin.
        origin = f"http://127.0.0.1:{web.server_port}/dicom-web/"
        assert instance["7FE00010"]["BulkDataURI"].startswith(origin)
        assert web.refused == []


def test_orthanc_serves_every_seg_frame_as_ohif_asks_for_it(orthanc, film_catalogue):
    """OHIF reads a SEG's frames one by one (WADO-RS ``/frames/N``): each must come back, for
    every film's size (Orthanc 1.10 cannot cut 1-bit frames whose width is not a multiple of 8)."""
    segs = {name: seg_of(film) for name, film in film_catalogue.items()}
    orthanc.stow([*(film.data for film in film_catalogue.values()), *segs.values()])
    accept = "multipart/related; type=application/octet-stream; transfer-syntax=*"
    refused = []
    for name, data in segs.items():
        seg = pydicom.dcmread(io.BytesIO(data))
        path = (f"/dicom-web/studies/{seg.StudyInstanceUID}/series/{seg.SeriesInstanceUID}"
                f"/instances/{seg.SOPInstanceUID}/frames/")  # fmt: skip
        for frame in range(1, int(seg.NumberOfFrames) + 1):
            status, _, body = orthanc.request("GET", f"{path}{frame}", headers={"Accept": accept})
            if status != 200:
                message = json.loads(body).get("Message", body[:200])
                refused.append(
                    f"{name} ({seg.Rows}x{seg.Columns}) frame {frame}: {status} {message}"
                )
    assert refused == [], refused


@pytest.mark.slow
@pytest.mark.skipif(chromium_missing() is not None, reason=str(chromium_missing()))
def test_ohif_shows_both_lungs_of_the_seg_over_the_xray(orthanc, film_catalogue, tmp_path):
    films = [film_catalogue[name] for name in SHOWN]
    segs = [seg_of(film) for film in films]
    orthanc.stow([*(film.data for film in films), *segs])
    problems, timings = {}, {}
    with serve(orthanc.http_port) as web, chromium(tmp_path / "profile") as driver:
        for film, seg in zip(films, segs, strict=True):
            t0 = time.perf_counter()
            study = film.header["StudyInstanceUID"]
            url = f"http://127.0.0.1:{web.server_port}/viewer?StudyInstanceUIDs={study}"
            logs: list[dict] = []
            web.refused.clear()
            try:
                found, png = _show(driver, url, seg, logs)
            except AssertionError as exc:  # the next study still gets its chance
                problems[film.name] = f"{exc}; Orthanc refused: {web.refused}"
                continue
            timings[film.name] = round(time.perf_counter() - t0, 1)
            (tmp_path / f"{film.name}.png").write_bytes(png)
            if film.name == SHOWN[0]:
                SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
                SCREENSHOT.write_bytes(png)
            # OHIF shows a film as stored: with PatientOrientation L\F, the patient's right on
            # the viewer's left; with R\F (stored mirrored), on the viewer's right.
            on_the_left = (
                "Right lung" if film.header["PatientOrientation"][0] == "L" else "Left lung"
            )
            on_the_right = "Left lung" if on_the_left == "Right lung" else "Right lung"
            if not found[on_the_left][1] < found[on_the_right][1]:
                problems[film.name] = f"{on_the_left} not on the viewer's left: {found}"
            logs.extend(driver.get_log("browser"))
            severe = [entry["message"] for entry in logs if entry["level"] == "SEVERE"]
            if severe:
                problems[film.name] = f"SEVERE console errors: {severe}"
    print(f"OHIF, from opening the study to both lungs drawn, seconds: {timings}")
    assert problems == {}, problems
