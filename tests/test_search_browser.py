"""End to end in headless Chromium: the search page's every feature, as a user drives it."""

from __future__ import annotations

import shutil

import pytest

import clipforge
from clipforge.search.embed import embed_collection
from clipforge.search.index import build_index

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")]
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (30, 60, 220)}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from PIL import Image

    from clipforge.search.server import BackgroundServer, create_app

    root = tmp_path_factory.mktemp("web")
    (root / "imgs").mkdir()
    for i, name in enumerate(list(COLOURS) * 4):
        img = Image.new("RGB", (32, 32), COLOURS[name])
        img.paste((255, 255, 255), (i * 2, i * 2, i * 2 + 5, i * 2 + 5))
        img.save(root / "imgs" / f"{i:02d}.png")
        (root / "imgs" / f"{i:02d}.txt").write_text(f"image {i}, a {name} square")
    model = clipforge.build("tiny-vit-32")
    clipforge.save(model, root / "model")
    emb = embed_collection(model, str(root / "imgs"), root / "emb", model_path=str(root / "model"), progress=False,
                           captions=True)
    build_index(emb, root / "idx")
    with BackgroundServer(create_app(root / "idx")) as url:
        yield url, root


def _status(page, text: str) -> str:
    page.wait_for_function("(t) => document.getElementById('status').textContent.includes(t)", arg=text)
    return page.text_content("#status")


def _ids(page) -> list[str]:
    return [h.get_attribute("data-id") for h in page.locator("#results .hit").all()]


def test_search_page_in_headless_chromium(server, tmp_path) -> None:
    from playwright.sync_api import sync_playwright

    url, root = server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        page.goto(url + "/")
        _status(page, "12 images indexed")
        # A text query, 5 a page; the query goes into the URL.
        page.click("#toggle-settings")
        page.fill("#k", "5")
        page.fill("#q", "a red square")
        page.press("#q", "Enter")
        _status(page, 'results 1-5 for "a red square"')
        first_page = _ids(page)
        assert len(first_page) == 5 and "q=a+red+square" in page.url and "k=5" in page.url
        assert page.is_disabled("#prev") and not page.is_disabled("#next")
        # Paging.
        page.click("#next")
        _status(page, "results 6-10")
        second_page = _ids(page)
        assert "offset=5" in page.url and not set(second_page) & set(first_page)
        # The back button returns to the first page; the address alone reproduces a search.
        page.go_back()
        _status(page, "results 1-5")
        assert _ids(page) == first_page
        shared = browser.new_page()
        shared.goto(page.url)
        _status(shared, 'results 1-5 for "a red square"')
        assert _ids(shared) == first_page and shared.input_value("#q") == "a red square"
        shared.close()
        # A full-size view with caption and metadata.
        page.locator("#results .hit").first.click()
        page.wait_for_selector("#viewer.open")
        assert page.get_attribute("#viewer-image", "src") == f"/image/{first_page[0]}"
        page.wait_for_function("document.getElementById('viewer-meta').textContent.includes('.png')")
        meta = page.text_content("#viewer-meta")
        assert "square" in meta and "32 x 32 px" in meta
        page.click("#viewer-close")
        page.wait_for_selector("#viewer", state="hidden")
        # Search by a result, then add a text to it (embedding arithmetic).
        page.locator("#results .hit").nth(1).click()
        page.click("#viewer-search")
        _status(page, f"results 1-5 for item #{first_page[1]}")
        top = page.locator("#results .hit").first
        assert top.get_attribute("data-id") == first_page[1] and float(top.locator(".score").text_content()) > 0.99
        page.fill("#q", "a blue square")
        page.press("#q", "Enter")
        _status(page, f'item #{first_page[1]} + "a blue square"')
        assert float(page.locator("#results .hit .score").first.text_content()) < 0.99  # no longer the image alone
        assert f"id={first_page[1]}" in page.url and "q=a+blue+square" in page.url
        # Match captions instead of images.
        page.click("#clear-image")
        _status(page, 'results 1-5 for "a blue square"')
        page.select_option("#match", "caption")
        _status(page, "(matching captions)")
        assert "match=caption" in page.url
        page.select_option("#match", "image")
        _status(page, 'results 1-5 for "a blue square"')
        # k above the server's limit is said, not silently cut.
        page.fill("#k", "500")
        page.press("#q", "Enter")
        page.wait_for_function("document.getElementById('notice').textContent.includes('limited to 200')")
        # The notice can come before the list is drawn again (a loaded machine): wait for the list.
        page.wait_for_function("document.querySelectorAll('#results .hit').length === 12")
        assert page.input_value("#k") == "200" and len(_ids(page)) == 12
        # A failed upload: an error, no half-shown query image, no stale results.
        (tmp_path / "notes.png").write_bytes(b"these are notes, not an image")
        page.set_input_files("#file", str(tmp_path / "notes.png"))
        _status(page, "error:")
        assert "error" in page.get_attribute("#status", "class") and "not an image" in page.text_content("#status")
        assert not page.is_visible("#query-image-box") and page.locator("#results .hit").count() == 0
        # A good upload: its own file comes back first with a score of about 1.
        page.fill("#q", "")
        page.set_input_files("#file", str(root / "imgs" / "04.png"))
        _status(page, "04.png")
        first = page.locator("#results .hit").first
        assert "image 4," in first.text_content() and float(first.locator(".score").text_content()) > 0.99
        page.screenshot(path=str(tmp_path / "page.png"))
        browser.close()
    assert (tmp_path / "page.png").stat().st_size > 5000


def test_search_page_takes_a_wav_for_an_index_of_a_bound_model(tmp_path) -> None:
    """A WAV dropped on the page searches an index embedded with a bound model (clipforge bind)."""
    import numpy as np
    from PIL import Image
    from playwright.sync_api import sync_playwright
    from scipy.io import wavfile

    from clipforge.bind.train import bind_modality
    from clipforge.search.server import BackgroundServer, create_app

    (tmp_path / "imgs").mkdir()
    for i, name in enumerate(list(COLOURS) * 2):
        Image.new("RGB", (32, 32), COLOURS[name]).save(tmp_path / "imgs" / f"{i:02d}.png")
    bound = bind_modality(clipforge.build("tiny-vit-32"), "speech", encoder={"widths": [8, 8]})
    clipforge.save(bound, tmp_path / "bound")
    emb = embed_collection(clipforge.load(tmp_path / "bound"), str(tmp_path / "imgs"), tmp_path / "emb",
                           model_path=str(tmp_path / "bound"), progress=False)
    build_index(emb, tmp_path / "idx")
    wav = tmp_path / "say red.wav"
    wavfile.write(wav, 16000, (0.3 * np.sin(np.arange(16000) / 4) * 32767).astype(np.int16))
    with BackgroundServer(create_app(tmp_path / "idx")) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = browser.new_page()
        page.goto(url + "/")
        _status(page, "6 images indexed")
        page.set_input_files("#file", str(wav))
        _status(page, "results 1-6")
        assert "say red.wav" in page.text_content("#query-image-label") and len(_ids(page)) == 6
        assert page.is_hidden("#query-image")
        page.set_input_files("#file", str(tmp_path / "imgs" / "00.png"))  # an image again: searched as one
        _status(page, "for 00.png")
        assert page.is_visible("#query-image")
        browser.close()
