"""End to end in headless Chromium: type a query, see results, upload an image, see results."""

from __future__ import annotations

import shutil

import pytest

import clipforge
from clipforge.search.embed import embed_collection
from clipforge.search.index import build_index

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from PIL import Image

    from clipforge.search.server import BackgroundServer, create_app

    root = tmp_path_factory.mktemp("web")
    (root / "imgs").mkdir()
    for i, colour in enumerate([(220, 30, 30), (30, 180, 60), (30, 60, 220)] * 4):
        img = Image.new("RGB", (32, 32), colour)
        img.paste((255, 255, 255), (i * 2, i * 2, i * 2 + 5, i * 2 + 5))
        img.save(root / "imgs" / f"{i:02d}.png")
        (root / "imgs" / f"{i:02d}.txt").write_text(f"image {i}")
    model = clipforge.build("tiny-vit-32")
    clipforge.save(model, root / "model")
    emb = embed_collection(model, str(root / "imgs"), root / "emb", model_path=str(root / "model"), progress=False)
    build_index(emb, root / "idx")
    with BackgroundServer(create_app(root / "idx")) as url:
        yield url, root


def test_search_page_in_headless_chromium(server, tmp_path) -> None:
    from playwright.sync_api import sync_playwright

    url, root = server
    args = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        page.goto(url + "/")
        page.wait_for_function("document.getElementById('status').textContent.includes('12 images indexed')")
        # Settings: ask for 5 results.
        page.click("#toggle-settings")
        page.fill("#k", "5")
        page.fill("#q", "a red square")
        page.press("#q", "Enter")
        page.wait_for_selector("#results .hit")
        assert page.locator("#results .hit").count() == 5
        assert "results for \"a red square\"" in page.text_content("#status")
        # Upload an image: its own file comes back first with a score of about 1.
        page.set_input_files("#file", str(root / "imgs" / "04.png"))
        page.wait_for_function("document.getElementById('status').textContent.includes('04.png')")
        first = page.locator("#results .hit").first
        assert "image 4" in first.text_content() and float(first.locator(".score").text_content()) > 0.99
        # Click a result to search by it.
        page.locator("#results .hit").nth(1).click()
        page.wait_for_function("document.getElementById('status').textContent.includes('item #')")
        assert page.locator("#results .hit").count() == 5
        page.screenshot(path=str(tmp_path / "page.png"))
        browser.close()
    assert (tmp_path / "page.png").stat().st_size > 5000
