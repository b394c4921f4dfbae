"""The audition page: built from a library, then driven in a real headless Chromium."""

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from reaudio.engine.audio.thumbnails import png_bytes, spectrogram_image
from reaudio.engine.jobs.audition import THUMBNAILS, build_audition
from reaudio.engine.jobs.library import Library

SR = 22050
SOUNDS = {
    "beep": "a short high beep",
    "hum": "a low electrical hum",
    "rain": "rain on a tin roof",
    "door": "a wooden door creaks open",
    "steps": "footsteps on gravel",
}


def _library(folder):
    rng = np.random.default_rng(0)
    t = np.arange(SR) / SR
    with Library(folder) as library:
        for seed, (name, prompt) in enumerate(SOUNDS.items()):
            audio = (
                0.3 * np.sin(2 * np.pi * (300 + 200 * seed) * t) * np.exp(-3 * t) + 0.01 * rng.standard_normal(SR)
            ).astype(np.float32)
            library.write(
                f"{name}-v0.wav",
                audio,
                SR,
                {
                    "key": f"{name}#0",
                    "id": name,
                    "prompt": prompt,
                    "seed": 10 - seed,
                    "duration_s": 1.0,
                    "neighbours": [{"id": f"n{seed}", "caption": f"real {name} recording"}],
                },
            )
    return folder


def test_the_page_lists_every_finished_clip_and_draws_each_thumbnail_once(tmp_path):
    folder = _library(tmp_path / "lib")
    page = build_audition(folder).read_text(encoding="utf-8")
    data = json.loads(page.split('type="application/json">')[1].split("</script>")[0])
    assert sorted(c["id"] for c in data) == sorted(SOUNDS)
    assert all((folder / c["thumb"]).is_file() and (folder / c["file"]).is_file() for c in data)
    assert "http://" not in page and "https://" not in page  # nothing fetched from the network
    thumbs = sorted((folder / THUMBNAILS).iterdir())
    stamps = [p.stat().st_mtime_ns for p in thumbs]
    time.sleep(0.01)
    build_audition(folder)  # a rebuild draws nothing again
    assert [p.stat().st_mtime_ns for p in sorted((folder / THUMBNAILS).iterdir())] == stamps
    (folder / "hum-v0.wav").write_bytes(b"broken")  # altered: left out until regenerated
    data = json.loads(build_audition(folder).read_text().split('type="application/json">')[1].split("</script>")[0])
    assert "hum" not in {c["id"] for c in data} and len(list((folder / THUMBNAILS).iterdir())) == len(SOUNDS) - 1


def test_a_prompt_cannot_break_out_of_the_page(tmp_path):
    with Library(tmp_path) as library:
        library.write(
            "x.wav",
            np.zeros(SR // 4, np.float32),
            SR,
            {"key": "x#0", "id": "x", "prompt": "</script><script>alert(1)</script> __TITLE__"},
        )
    page = build_audition(tmp_path).read_text()
    assert "</script><script>alert" not in page and page.count("<script") == 2


def test_thumbnails_are_valid_pngs_with_the_sound_in_them():
    t = np.arange(2 * SR) / SR
    image = spectrogram_image(np.sin(2 * np.pi * 1000 * t), SR)
    assert image.shape == (48, 160, 3) and image.dtype == np.uint8
    row = image[:, 80].astype(int).sum(axis=1)
    brightest = int(row.argmax())
    edges = np.geomspace(40.0, SR / 2, 49)[::-1]  # rows run from high to low frequency
    assert edges[brightest + 1] <= 1000 <= edges[brightest]
    png = png_bytes(image)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    import io

    imread = pytest.importorskip("matplotlib.image", reason="matplotlib decodes the PNG independently").imread

    decoded = imread(io.BytesIO(png), format="png")
    assert np.array_equal((decoded[..., :3] * 255).round().astype(np.uint8), image)


def _browser():
    """A headless Chromium through Selenium, or a skip saying what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not binary or not driver_path:
        pytest.skip(
            "headless Chromium is not installed (Debian: apt-get install chromium chromium-driver; .ci/run installs it)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--window-size=1400,700",
        "--autoplay-policy=no-user-gesture-required",
        "--allow-file-access-from-files",
    ):
        options.add_argument(flag)
    from selenium.webdriver.chrome.service import Service

    return webdriver.Chrome(service=Service(driver_path), options=options)


def test_the_page_plays_filters_sorts_and_marks_in_a_real_browser(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    page = build_audition(_library(tmp_path / "lib"))
    browser = _browser()
    try:
        browser.get(page.resolve().as_uri())
        rows = lambda: browser.find_elements(By.CSS_SELECTOR, "#rows tr")  # noqa: E731
        assert len(rows()) == len(SOUNDS)
        assert browser.execute_script("return [...document.images].every(i => i.complete && i.naturalWidth == 160)")
        # Keyboard: down to the second row, space plays it.
        body = browser.find_element(By.TAG_NAME, "body")
        body.send_keys(Keys.ARROW_DOWN, " ")
        playing = (
            "const a = document.querySelector('tr.selected audio'); return [a.error && a.error.code, a.currentTime]"
        )
        WebDriverWait(browser, 10).until(lambda b: b.execute_script(playing)[1] > 0.05)
        assert browser.execute_script(playing)[0] is None  # no media error
        second = rows()[1].get_attribute("data-key")
        body.send_keys("m")
        assert browser.find_element(By.ID, "marked").get_attribute("value") == second
        # Filter by a neighbour's caption word, then clear.
        box = browser.find_element(By.ID, "filter")
        box.send_keys("creaks")
        assert [r.get_attribute("data-key") for r in rows()] == ["door#0"]
        box.clear()
        box.send_keys(Keys.SPACE, Keys.BACK_SPACE)
        assert len(rows()) == len(SOUNDS)
        # Sort by seed (the header): ascending seeds.
        browser.find_element(By.CSS_SELECTOR, "th[data-key=seed]").click()
        seeds = [int(r.find_elements(By.TAG_NAME, "td")[6].text) for r in rows()]
        assert seeds == sorted(seeds)
        shot = browser.get_screenshot_as_png()
        (tmp_path / "audition.png").write_bytes(shot)
        if os.environ.get("REAUDIO_AUDITION_SCREENSHOT"):
            Path(os.environ["REAUDIO_AUDITION_SCREENSHOT"]).write_bytes(shot)
    finally:
        browser.quit()
    import io

    imread = pytest.importorskip("matplotlib.image", reason="matplotlib decodes the PNG independently").imread

    pixels = imread(io.BytesIO(shot), format="png")[..., :3]
    assert pixels.shape[0] > 300 and pixels.std() > 0.05  # not blank
    assert len(np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 50
