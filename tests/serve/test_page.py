"""The page in a real browser: headless Chromium (Debian's chromium and chromium-driver, driven
by Selenium) uploads X-rays, waits for the overlay, and reads what a person would read."""

from __future__ import annotations

import pytest
from server import chromium, chromium_missing, segment_rows

pytestmark = [
    pytest.mark.skipif(chromium_missing() is not None, reason=str(chromium_missing())),
    pytest.mark.usefixtures("one_torch_thread"),
]


def _wait(driver, condition, seconds: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds).until(lambda d: condition(d))


def _field(driver, name: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, f'#details [data-field="{name}"]').text


def _number(text: str) -> int:
    return int(text.replace(",", ""))


def test_page_segments_an_xray_and_shows_lungseg_segments_areas(
    server, served_onnx, examples_dir, tmp_path, capsys
):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    xray = examples_dir / "COVID" / "images" / "1d435a4b.png"
    row = segment_rows([xray], ["--onnx", served_onnx], tmp_path / "segment", capsys)[xray.stem]
    with chromium(tmp_path / "profile") as driver:
        driver.get(f"http://127.0.0.1:{server.port}/")
        model = driver.find_element(By.ID, "model")
        _wait(driver, lambda d: model.get_attribute("value") == "unet-fast")
        # The file picker is reachable from the keyboard.
        focused = []
        for _ in range(4):  # the skip link, the API link, then the picker
            ActionChains(driver).send_keys(Keys.TAB).perform()
            focused.append(driver.switch_to.active_element.get_attribute("id"))
        assert "files" in focused, focused

        driver.find_element(By.ID, "files").send_keys(str(xray))
        viewer = driver.find_element(By.ID, "viewer")
        _wait(driver, lambda d: viewer.get_attribute("data-state") == "ready")
        driver.save_screenshot(str(tmp_path / "page-one-xray.png"))
        for field in ("right_lung_px", "left_lung_px", "lung_px"):
            shown = _number(_field(driver, field))
            assert shown == pytest.approx(int(row[field]), rel=0.01), field
        uncertainty = f"{float(row['uncertain_fraction']):.3f}"
        assert _field(driver, "uncertain_fraction").startswith(uncertainty)
        assert driver.find_element(By.ID, "review").text.split("\n")[0] in (
            "Review this mask", "No review flag",
        )  # fmt: skip
        status = driver.find_element(By.ID, "status")
        assert status.get_attribute("aria-live") == "polite" and "1 X-ray segmented" in status.text
        link = driver.find_element(By.ID, "download-mask")
        assert link.get_attribute("href").startswith("blob:")
        assert link.get_attribute("download") == "1d435a4b_mask.png"

        driver.find_element(By.CSS_SELECTOR, 'input[name="style"][value="outline"]').click()
        _wait(driver, lambda d: viewer.get_attribute("data-state") == "ready")
        assert driver.get_log("browser") == [], "the page logged errors"


def test_page_lists_several_files_sortable_by_uncertainty(server, examples_dir, tmp_path):
    from selenium.webdriver.common.by import By

    images = sorted((examples_dir / "COVID" / "images").glob("*.png"))[:4]
    broken = tmp_path / "broken.png"
    broken.write_bytes(images[0].read_bytes()[:500])
    with chromium(tmp_path / "profile") as driver:
        driver.get(f"http://127.0.0.1:{server.port}/")
        driver.find_element(By.ID, "files").send_keys("\n".join(map(str, [*images, broken])))
        status = driver.find_element(By.ID, "status")
        _wait(driver, lambda d: "could not be read" in status.text)
        assert status.text == "4 X-rays segmented; " + status.text.split("; ", 1)[1]
        driver.find_element(By.CSS_SELECTOR, 'button[data-sort="uncertainty"]').click()
        header = driver.find_element(By.CSS_SELECTOR, 'th:has(button[data-sort="uncertainty"])')
        assert header.get_attribute("aria-sort") == "descending"
        rows = driver.find_elements(By.CSS_SELECTOR, "#files-table tbody tr")
        values = [r.find_elements(By.TAG_NAME, "td")[-1].text for r in rows]
        assert values[-1] == "" and "truncated PNG" in rows[-1].text  # the unread file last
        shown = [float(v) for v in values[:-1]]
        assert shown == sorted(shown, reverse=True) and len(shown) == 4
        rows[-1].find_element(By.CSS_SELECTOR, ".name-button").click()
        alert = driver.find_element(By.ID, "detail-error")
        assert alert.get_attribute("role") == "alert" and "truncated PNG" in alert.text
        driver.save_screenshot(str(tmp_path / "page-several-xrays.png"))


def _downloaded(folder, name: str, seconds: float = 30):
    """The file ``name`` once Chromium has finished writing it into ``folder``."""
    import time

    deadline = time.monotonic() + seconds
    path = folder / name
    while time.monotonic() < deadline:
        if path.is_file() and not list(folder.glob("*.crdownload")):
            return path
        time.sleep(0.1)
    raise AssertionError(f"{name} not downloaded: {sorted(p.name for p in folder.iterdir())}")


def _rect(driver, element_id: str) -> dict:
    script = "return document.getElementById(arguments[0]).getBoundingClientRect().toJSON();"
    return driver.execute_script(script, element_id)


def test_a_phone_sees_the_verdict_and_downloads_the_seg_it_was_shown(server, xray_files, tmp_path):
    """360 px wide (issue 24 items 1, 2, 4): no sideways scrolling, the verdict and the areas
    above the X-ray, the table in its own scroller; with TTA on, the DICOM SEG holds the TTA mask
    shown; a SEG that cannot be made says so; the table exports as CSV and clears."""
    import numpy as np
    import pydicom
    from pydicom.uid import generate_uid
    from selenium.webdriver.common.by import By

    ds = pydicom.dcmread(xray_files["mono2"])
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    with_uids = tmp_path / "chest.dcm"
    ds.save_as(with_uids, enforce_file_format=True)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with chromium(tmp_path / "profile") as driver:
        # A phone's screen: the window itself cannot be narrower than 500 px.
        metrics = {"width": 360, "height": 740, "deviceScaleFactor": 2, "mobile": True}
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
        driver.execute_cdp_cmd(
            "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
        )
        driver.get(f"http://127.0.0.1:{server.port}/")
        assert driver.execute_script("return window.innerWidth") <= 360
        _wait(driver, lambda d: d.find_element(By.ID, "model").get_attribute("value"))
        driver.find_element(By.ID, "tta").click()
        files = [with_uids, xray_files["gray"], xray_files["mono1"]]
        driver.find_element(By.ID, "files").send_keys("\n".join(map(str, files)))
        status = driver.find_element(By.ID, "status")
        _wait(driver, lambda d: "3 X-rays segmented" in status.text)
        wide = "return document.documentElement.scrollWidth - window.innerWidth"
        assert driver.execute_script(wide) <= 0, "the page scrolls sideways"

        rows = driver.find_elements(By.CSS_SELECTOR, "#files-table tbody tr")
        row = next(r for r in rows if "chest.dcm" in r.text)
        row.find_element(By.CSS_SELECTOR, ".name-button").click()
        viewer = driver.find_element(By.ID, "viewer")
        _wait(driver, lambda d: viewer.get_attribute("data-state") == "ready")
        _wait(driver, lambda d: "chest.dcm" in d.find_element(By.ID, "detail-name").text)
        review, areas, image = (_rect(driver, i) for i in ("review", "areas", "viewer"))
        assert review["bottom"] <= image["top"] and areas["bottom"] <= image["top"]
        assert image["right"] <= 360
        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(str(tmp_path / "phone.png"))
        driver.execute_script("document.getElementById('viewer').scrollIntoView()")
        driver.save_screenshot(str(tmp_path / "phone-viewer.png"))
        driver.execute_script("document.getElementById('table-panel').scrollIntoView()")
        driver.save_screenshot(str(tmp_path / "phone-table.png"))
        driver.execute_script("window.scrollTo(0, 0)")

        assert "test-time augmentation" in _field(driver, "model")
        shown = _number(_field(driver, "lung_px"))
        driver.find_element(By.ID, "download-seg").click()
        seg = pydicom.dcmread(_downloaded(downloads, "chest_seg.dcm"))
        frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
        assert int(np.count_nonzero(frames.any(axis=0))) == shown, "the SEG is not the mask shown"
        note = driver.find_element(By.ID, "download-note")
        assert note.text == "DICOM SEG downloaded."

        # mono1 has no study or series UID: no SEG can reference it, and the page says so.
        rows = driver.find_elements(By.CSS_SELECTOR, "#files-table tbody tr")
        next(r for r in rows if "mono1" in r.text).find_element(By.CSS_SELECTOR, "button").click()
        _wait(driver, lambda d: "mono1" in d.find_element(By.ID, "detail-name").text)
        driver.find_element(By.ID, "download-seg").click()
        _wait(driver, lambda d: note.text.startswith("DICOM SEG failed: "))

        driver.find_element(By.ID, "export-csv").click()
        table = _downloaded(downloads, "lungseg-results.csv").read_text()
        lines = table.strip().splitlines()
        assert lines[0].startswith("file,result,right_lung_px,left_lung_px") and len(lines) == 4
        driver.find_element(By.ID, "clear").click()
        assert not driver.find_element(By.ID, "results").is_displayed()
        logged = [
            e for e in driver.get_log("browser") if "Failed to load resource" not in e["message"]
        ]
        assert logged == [], "the page logged errors"  # the refused SEG above aside


def test_the_page_asks_for_a_missing_api_key(onnx_cache, xray_files, tmp_path):
    from selenium.webdriver.common.by import By
    from server import start

    env = {"LUNGSEG_API_KEY": "page-key", "LUNGSEG_CACHE_DIR": str(onnx_cache)}
    with start([], tmp_path, env) as keyed, chromium(tmp_path / "profile") as driver:
        driver.get(f"http://127.0.0.1:{keyed.port}/")
        model = driver.find_element(By.ID, "model")
        assert "API key" in model.text and "loading" not in model.text
        assert "API key" in driver.find_element(By.ID, "model-note").text
        driver.find_element(By.ID, "files").send_keys(str(xray_files["gray"]))
        status = driver.find_element(By.ID, "status")
        _wait(driver, lambda d: "not sent" in status.text)
        assert "API key is missing" in status.text and "could not be read" not in status.text
        driver.find_element(By.ID, "api-key").send_keys("page-key")
        driver.find_element(By.ID, "tta").click()  # moves the focus: the key field's change
        _wait(driver, lambda d: model.get_attribute("value") == "unet-fast")
