"""A real browser (headless Chromium driven by Selenium) uploads an image, clicks on it, and sees a mask.

The screenshot is kept as a test artifact: test-artifacts/demo_browser.png.
"""

import io
import os
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bigl_sam.demo.app import build_app, launch
from bigl_sam.demo.cli import EXAMPLES_DIR, example_images
from bigl_sam.demo.handlers import DemoHandlers
from bigl_sam.demo.models import load_demo_models
from bigl_sam.demo.render import MASK_COLOR, POSITIVE_COLOR

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1400,1700",
)
WAIT_S = 90

MISSING_BROWSER = "needs Debian's chromium and chromium-driver (/usr/bin/chromedriver)"
if os.environ.get("BIGL_SAM_REQUIRE_BROWSER") and not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    raise RuntimeError(MISSING_BROWSER + "; BIGL_SAM_REQUIRE_BROWSER is set, so this may not skip")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
    pytest.skip(MISSING_BROWSER, allow_module_level=True)

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def page_url(tmp_path_factory):
    torch.manual_seed(0)  # random weights whose first mask is not empty
    workdir = tmp_path_factory.mktemp("demo-browser")
    handlers = DemoHandlers(load_demo_models("bigl_test", compare="vit_test"), workdir)
    app = build_app(handlers, example_images(EXAMPLES_DIR))
    yield launch(app, "127.0.0.1", None, workdir, block=False)
    app.close()


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(str(CHROMEDRIVER)))
    yield driver
    driver.quit()


def gray_photo(path: Path) -> Path:
    """A plain gray picture with a darker square: no blue anywhere until a mask is drawn on it."""
    pixels = np.full((240, 320, 3), 150, dtype=np.uint8)
    pixels[60:180, 100:220] = 90
    Image.fromarray(pixels).save(path)
    return path


def shown_picture(driver) -> np.ndarray:
    source = driver.find_element(By.CSS_SELECTOR, "#bigl-image img").get_attribute("src")
    with urllib.request.urlopen(source, timeout=30) as response:
        return np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB"), dtype=np.int16)


def mask_tinted_share(picture: np.ndarray) -> float:
    """Share of pixels pulled toward the mask blue (the gray photo has none)."""
    blue_minus_red = picture[..., 2] - picture[..., 0]
    return float((blue_minus_red > (MASK_COLOR[2] - MASK_COLOR[0]) * 0.4).mean())


def test_upload_click_and_see_a_mask(page_url, browser, tmp_path):
    wait = WebDriverWait(browser, WAIT_S)
    browser.get(page_url)
    upload = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#bigl-image input[type=file]"))
    upload.send_keys(str(gray_photo(tmp_path / "gray.png")))
    wait.until(lambda d: "Image 320x240" in d.find_element(By.ID, "bigl-status").text)
    before = shown_picture(browser)
    assert before.shape == (240, 320, 3) and mask_tinted_share(before) == 0.0

    image = browser.find_element(By.CSS_SELECTOR, "#bigl-image img")
    ActionChains(browser).move_to_element(image).click().perform()  # the centre: the dark square
    wait.until(lambda d: "1 positive" in d.find_element(By.ID, "bigl-status").text)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#bigl-candidates img")) == 3)
    after = shown_picture(browser)
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "demo_browser.png"
    browser.save_screenshot(str(screenshot))
    print(f"screenshot: {screenshot}")

    assert mask_tinted_share(after) > 0.01
    assert np.abs(after[120, 160] - POSITIVE_COLOR).max() < 40  # the click landed where it was made
    status = browser.find_element(By.ID, "bigl-status").text
    assert "bigl_test" in status and "vit_test" in status and "ms" in status
    assert browser.find_element(By.CSS_SELECTOR, "#bigl-compare img").is_displayed()

    browser.find_element(By.ID, "bigl-undo").click()
    wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, "#bigl-candidates img"))
    assert mask_tinted_share(shown_picture(browser)) == 0.0
    browser.find_element(By.CSS_SELECTOR, "#bigl-examples .gallery-item").click()
    wait.until(lambda d: "Image 640x480" in d.find_element(By.ID, "bigl-status").text)  # encoded
    assert shown_picture(browser).shape == (480, 640, 3)
