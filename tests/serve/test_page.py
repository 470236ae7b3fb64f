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
