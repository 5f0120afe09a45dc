"""The report in a real browser: Debian's headless Chromium (installed by .ci/run where missing), driven by
selenium through Debian's chromedriver (nothing downloads a browser build).

Checked on reports written by ``interp report``, ``interp circuit`` and ``interp sae`` on shipped models, plus
hostile strings: no console errors,
every image decoded (natural width > 0), every table-of-contents link lands on its section, no text wider
than its box, user strings escaped (no injected element runs). A screenshot is saved beside the test output.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from interp_core.cli import main
from interp_core.report import Report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
SHOTS = Path(__file__).resolve().parent / "output"


def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert CHROMIUM and DRIVER, "Debian's chromium and chromium-driver are needed (.ci/run installs them)"
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,1000"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(DRIVER), options=opts)


@pytest.fixture(scope="module")
def written_report(tmp_path_factory):
    import vision

    out = tmp_path_factory.mktemp("browser")
    x, y = vision.zoo.test_data("digits-vit")
    torch.save({"x": x[:60], "y": y[:60]}, out / "digits.pt")
    assert main(["report", "vision:digits-vit", "--data", str(out / "digits.pt"), "--out", str(out / "cli")]) == 0
    threes, eights = x[y == 3][:6], x[y == 8][:6]
    torch.save(threes, out / "threes.pt")
    torch.save(eights, out / "eights.pt")
    assert main(["--threads", "1", "circuit", "vision:digits-vit", "--clean", str(out / "threes.pt"), "--corrupted",
                 str(out / "eights.pt"), "--metric", "logit_diff:3,8", "--method", "eap", "--n-random", "2",
                 "--out", str(out / "circuit")]) == 0
    assert main(["--threads", "1", "sae", "vision:digits-vit", "--data", str(out / "digits.pt"), "--site",
                 "blocks.1.resid_post", "--latents", "32", "--k", "4", "--epochs", "1", "--out", str(out / "sae")]) == 0
    hostile = Report('<script>window.__pwned = 1</script> "quotes" & <b>tags</b>',
                     description="<img src=x onerror='window.__pwned=2'>")
    hostile.add("<i>class</i> names", table=[{"class": "<script>window.__pwned=3</script>", "score": 0.5,
                                             "path": "/tmp/a&b/<c>.png"}])
    hostile.write(out / "hostile")
    return out


def check_in_browser(page: Path, shot: str, min_images: int = 0, hostile: bool = False) -> None:
    """Open ``page`` in headless Chromium and check it (module docstring); save a screenshot as ``shot``."""
    driver = _browser()
    try:
        driver.get(page.as_uri())
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])")
        assert all(done and width > 0 for _, done, width in images), images
        assert len(images) >= min_images
        links = driver.execute_script("return Array.from(document.querySelectorAll('#contents a'))"
                                      ".map(a => a.getAttribute('href'))")
        assert len(links) >= 3
        for href in links:
            driver.execute_script("window.scrollTo(0, 0)")
            driver.find_element("css selector", f'#contents a[href="{href}"]').click()
            top = driver.execute_script(f"return document.getElementById('{href[1:]}').getBoundingClientRect().top")
            at_end = driver.execute_script(
                "return window.innerHeight + window.scrollY >= document.body.scrollHeight - 2")
            assert abs(top) < 5 or at_end, (href, top)
        overflowing = driver.execute_script(
            "return Array.from(document.querySelectorAll('p, td, th, dd, h1, h2, figcaption, li'))"
            ".filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.textContent.slice(0, 60))")
        assert not overflowing, overflowing
        assert driver.execute_script("return window.__pwned === undefined")
        if hostile:
            assert "<script>window.__pwned=3</script>" in driver.find_element("css selector", "td").text
        driver.execute_script("window.scrollTo(0, 0)")
        SHOTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(SHOTS / shot))
        assert (SHOTS / shot).stat().st_size > 10_000
    finally:
        driver.quit()


@pytest.mark.parametrize("which", ["cli", "circuit", "sae", "hostile"])
def test_report_in_a_real_browser(written_report, which):
    check_in_browser(written_report / which / "report.html", f"report-{which}.png",
                     min_images=0 if which == "hostile" else 3, hostile=which == "hostile")
