"""The web page at ``/``, in a real headless Chromium against a live uvicorn on loopback (tiny random models).

The page is driven like a person would: pick files and upload them, read the documents panel, delete and
re-index, search with filters, ask, enlarge a cited page and toggle its heatmap, all with the keyboard where a
person could. Each flow runs at a desktop width and at 400 px (no sideways scrolling there), is checked with
axe-core (tests/vendor/axe-core) for accessibility, and leaves screenshots in ``.artifacts/web/`` (or
``$COLSMOL_WEB_SHOTS``) for review. The browser is the system's ``/usr/bin/chromium`` (never a download), one
per module, driven by Playwright; without either, these tests skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from api.http.app import create_app
from indexer.settings import Settings
from rag.pipeline import RAGPipeline
from testkit.pdfs import LETTER, PageSpec, build_pdf, write_pdf
from testkit.servers import LiveServer
from tests.conftest import tiny_settings
from tests.test_api import wait_job

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.is_file():
    pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install playwright; no browser download needed)"
)

ROOT = Path(__file__).resolve().parents[1]
AXE = ROOT / "tests" / "vendor" / "axe-core" / "axe.min.js"
SHOTS = Path(os.environ.get("COLSMOL_WEB_SHOTS") or ROOT / ".artifacts" / "web")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 30_000
API_KEY = "web-test-key"
SCORE = re.compile(r"^score -?\d+\.\d{3}$")
QUESTION = "What was the revenue in 2023?"
WIDTHS = {"desktop": (1280, 900), "narrow": (400, 800)}

CSP_WATCH = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__cspViolations.push(`${e.violatedDirective}: ${e.blockedURI || "inline"} at ${e.sourceFile}:${e.lineNumber}`);
});
"""

# The image has loaded (and decoded to something) from the URL the page means to show.
IMAGE_SHOWN = """([sel, part]) => {
  const img = document.querySelector(sel);
  return !!img && (img.dataset.src || "").includes(part) && img.complete && img.naturalWidth > 0;
}"""

# Region boxes drawn over an image: [x, y, width, height] of each rect, page-relative.
BOXES = """sel => [...document.querySelectorAll(sel + " svg.regions rect")].map(
  r => ["x", "y", "width", "height"].map(a => Number(r.getAttribute(a))))"""


def _boxes(regions: list[dict[str, float]]) -> list[list[float]]:
    """Regions as the [x, y, width, height] of the rects that should be drawn for them, rounded."""
    return [[round(v, 3) for v in (r["x0"], r["y0"], r["x1"] - r["x0"], r["y1"] - r["y0"])] for r in regions]


def _drawn(page: Any, selector: str) -> list[list[float]]:
    return [[round(v, 3) for v in box] for box in page.evaluate(BOXES, selector)]


def _half_letter(*texts: str) -> list[PageSpec]:
    return [PageSpec(LETTER[0] / 2, LETTER[1] / 2, text=t) for t in texts]


# ---------------------------------------------------------------------------------------------- servers
@pytest.fixture(scope="module")
def settings(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return tiny_settings(tiny_models, tmp_path_factory.mktemp("web-data"), max_new_tokens=8, dpi=50)


@pytest.fixture(scope="module")
def server(settings: Settings) -> Iterator[LiveServer]:
    """No API key; two documents with metadata, uploaded over HTTP."""
    rag = RAGPipeline.from_settings(settings)
    try:
        with LiveServer(create_app(settings, rag)) as live:
            with httpx.Client(base_url=live.url, timeout=60) as c:
                for name, texts, team in [
                    ("quarterly report.pdf", ("revenue 2023 was 12 million", "costs", "memo"), "finance"),
                    ("handbook.pdf", ("holidays", "travel policy"), "people"),
                ]:
                    files = [("files", (name, build_pdf(_half_letter(*texts)), "application/pdf"))]
                    r = c.post("/v1/documents", files=files, data={"metadata": f'{{"team": "{team}"}}'})
                    assert r.status_code == 202, r.text
                    assert wait_job(c, r.json()["job_id"])["state"] == "done"
            yield live
    finally:
        rag.close()


@pytest.fixture(scope="module")
def keyed_server(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """An app that needs ``Authorization: Bearer API_KEY`` on /v1, over its own index, empty between tests."""
    keyed = settings.model_copy(update={"api_key": API_KEY, "data_dir": tmp_path_factory.mktemp("web-keyed")})
    rag = RAGPipeline.from_settings(keyed)
    try:
        with LiveServer(create_app(keyed, rag)) as live:
            yield live
    finally:
        rag.close()


# ---------------------------------------------------------------------------------------------- the browser
@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """One headless Chromium for the module; each test gets its own context (a fresh profile)."""
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Browser:
    """One page in a fresh context, recording every request and every script error."""

    def __init__(self, chromium: Any, origin: str, width: str = "desktop") -> None:
        self.origin, self.width = origin, width
        w, h = WIDTHS[width]
        self.context = chromium.new_context(viewport={"width": w, "height": h})
        self.context.add_init_script(CSP_WATCH)  # every CSP violation, as the page sees it
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(f"console: {m.text}"))
        self.page.on("response", lambda r: r.status >= 400 and self.errors.append(f"HTTP {r.status}: {r.url}"))

    def close(self) -> None:
        self.context.close()

    def csp_violations(self) -> list[str]:
        return list(self.page.evaluate("window.__cspViolations || []"))

    def check_clean(self) -> None:
        """No script errors, no CSP violations, and nothing fetched from anywhere but the server (the page works
        offline)."""
        assert self.errors == [], self.errors
        assert self.csp_violations() == []
        foreign = [u for u in self.requests if not u.startswith((self.origin, "blob:", "data:"))]
        assert foreign == [], foreign

    def image_shown(self, selector: str, url_part: str) -> str:
        """Wait until the image at ``selector`` shows the API URL containing ``url_part``; its resolved src."""
        self.page.wait_for_function(IMAGE_SHOWN, arg=[selector, url_part])
        return str(self.page.eval_on_selector(selector, "img => img.src"))

    def shot(self, name: str) -> None:
        """A screenshot for review, and (at every width) the page fits its viewport: no sideways scrolling."""
        self.page.screenshot(path=str(SHOTS / f"{name}-{self.width}.png"), full_page=True)
        sizes = self.page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
        assert sizes[0] <= sizes[1], f"{name} at {self.width}: scrollWidth {sizes[0]} > clientWidth {sizes[1]}"

    def axe(self, name: str) -> None:
        """axe-core's WCAG 2.x A/AA rules over the page as it is now (open dialogs included): no violations."""
        # Through DevTools, not a <script>: the page's CSP (rightly) refuses inline scripts.
        self.page.evaluate(AXE.read_text(encoding="utf-8") + "\n;undefined")
        result = self.page.evaluate(
            """() => axe.run(document, {runOnly: {type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]}})
              .then(r => r.violations.map(v => `${v.id} (${v.impact}): ` +
                                              v.nodes.map(n => n.target.join(" ")).join(", ")))"""
        )
        assert result == [], f"axe on {name} at {self.width}: {result}"


@pytest.fixture(params=list(WIDTHS))
def width(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def browser(chromium: Any, server: LiveServer, width: str) -> Iterator[Browser]:
    b = Browser(chromium, server.url, width)
    yield b
    b.close()


@pytest.fixture
def keyed_browser(chromium: Any, keyed_server: LiveServer, width: str) -> Iterator[Browser]:
    b = Browser(chromium, keyed_server.url, width)
    yield b
    b.close()


# ---------------------------------------------------------------------------------------------- flows
def test_key_empty_state_upload_documents_reindex_delete(
    keyed_browser: Browser, keyed_server: LiveServer, tmp_path: Path
) -> None:
    """A new user on a server with a key and nothing indexed: told where the key goes, invited to upload; each
    file's result with the server's reason; the document listed; re-indexed from a new version; deleted."""
    browser, page = keyed_browser, keyed_browser.page
    page.goto(keyed_server.url + "/")
    assert page.title().startswith("colsmol")

    # No key yet: the panel says where it goes, and the key field is marked.
    status = page.locator("#doc-status")
    sync_api.expect(status).to_contain_text("needs an API key")
    sync_api.expect(status).to_contain_text("“API key” field")
    assert page.get_attribute("#api-key", "aria-invalid") == "true"
    browser.errors.clear()  # the browser logs the refused fetches to the console

    # The key is kept for this tab only (not on disk) unless "Remember" is ticked.
    page.fill("#api-key", API_KEY)
    page.press("#api-key", "Tab")
    sync_api.expect(page.locator("#doc-empty")).to_be_visible()
    sync_api.expect(page.locator("#doc-empty")).to_contain_text("Nothing is indexed yet")
    assert page.get_attribute("#api-key", "aria-invalid") is None
    assert page.evaluate("[sessionStorage.getItem('colsmol-key'), localStorage.getItem('colsmol-key')]") == [
        API_KEY,
        None,
    ]
    browser.shot("1-empty")
    browser.axe("the empty state")

    # The empty state's button leads to the file input. Two files: one good, one broken (its own reason).
    with page.expect_file_chooser() as chooser:
        page.click("#doc-empty-upload")
    good = write_pdf(tmp_path / "annual report.pdf", _half_letter("revenue 2023 was 12 million", "outlook"))
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"%PDF-1.4 this is not a PDF")
    chooser.value.set_files([str(good), str(broken)])
    page.locator("#upload-form details summary").click()
    page.fill("#upload-metadata", '{"team": "finance"}')
    page.click("#upload-button")
    upload_status = page.locator("#upload-status")
    sync_api.expect(upload_status).to_contain_text("Indexing done", timeout=60_000)
    assert "2 pages embedded, 1 file failed" in upload_status.inner_text()
    rows = page.locator("#upload-files li")
    assert rows.count() == 2
    sync_api.expect(rows.nth(0)).to_have_text("annual report.pdf: indexed: 2 pages")
    assert rows.nth(1).get_attribute("class") == "failed"
    assert rows.nth(1).inner_text().startswith("broken.pdf: failed: ") and len(rows.nth(1).inner_text()) > 25
    assert page.locator("#upload-progress").is_hidden()  # no full blue bar left behind
    assert page.is_enabled("#upload-button")

    # The documents panel: name, pages, date, state, metadata, a thumbnail fetched with the key.
    docs = page.locator("#doc-list .doc")
    sync_api.expect(docs).to_have_count(1)
    row = docs.first
    assert row.locator(".doc-name").inner_text() == "annual report.pdf"
    meta = row.locator(".doc-meta").inner_text()
    assert meta.startswith("2 pages · ") and meta.endswith("indexed")
    assert row.locator(".doc-md").inner_text() == "team: finance"
    assert browser.image_shown("#doc-list .doc:first-child .thumb img", "size=thumb").startswith("blob:")
    assert page.locator("#doc-empty").is_hidden()
    first_id = row.get_attribute("data-doc-id")
    browser.shot("2-uploaded")

    # Re-index from a new version of the file: the new document replaces the old one.
    with page.expect_file_chooser() as chooser:
        row.get_by_role("button", name="Re-index annual report.pdf from its file").click()
    (tmp_path / "v2").mkdir()
    new = write_pdf(tmp_path / "v2" / "annual report.pdf", _half_letter("revenue 2024 was 15 million", "a", "b"))
    chooser.value.set_files(str(new))
    sync_api.expect(upload_status).to_contain_text("The previous version was removed", timeout=60_000)
    sync_api.expect(docs).to_have_count(1)
    sync_api.expect(docs.first.locator(".doc-meta")).to_contain_text("3 pages")
    assert docs.first.get_attribute("data-doc-id") != first_id
    assert docs.first.locator(".doc-md").inner_text() == "team: finance"  # the metadata went with it

    # Delete asks first: Cancel keeps it (focus back on its button), Delete removes it.
    delete = docs.first.get_by_role("button", name="Delete annual report.pdf")
    delete.click()
    dialog = page.locator("#confirm")
    sync_api.expect(dialog).to_have_attribute("open", "")
    assert "annual report.pdf" in page.locator("#confirm-text").inner_text()
    assert page.evaluate("document.activeElement.id") == "confirm-cancel"
    browser.shot("3-confirm-delete")
    browser.axe("the delete confirmation")
    page.keyboard.press("Enter")  # Cancel has the focus
    sync_api.expect(dialog).not_to_have_attribute("open", "")
    assert docs.count() == 1 and page.evaluate("document.activeElement.textContent") == "Delete"
    delete.click()
    page.click("#confirm-ok")
    sync_api.expect(page.locator("#doc-status")).to_contain_text("Deleted “annual report.pdf” (3 pages)")
    sync_api.expect(page.locator("#doc-empty")).to_be_visible()
    browser.shot("4-deleted")
    browser.check_clean()

    # "Remember" keeps the key across tabs (localStorage); unticking forgets it there.
    page.check("#remember-key")
    assert page.evaluate("localStorage.getItem('colsmol-key')") == API_KEY
    page.uncheck("#remember-key")
    assert page.evaluate("localStorage.getItem('colsmol-key')") is None


def test_search_filters_regions_viewer_keyboard(browser: Browser, server: LiveServer) -> None:
    page = browser.page
    page.goto(server.url + "/")
    sync_api.expect(page.locator("#doc-list .doc")).to_have_count(2)

    # Filters come from what the collection holds (GET /v1/facets, loaded beside the documents list).
    sync_api.expect(page.locator("#filter-doc option")).to_have_count(3)
    doc_options = page.locator("#filter-doc option").all_inner_texts()
    assert doc_options == ["All documents (2)", "handbook.pdf (2 p.)", "quarterly report.pdf (3 p.)"]
    meta_options = page.locator("#filter-meta option").all_inner_texts()
    assert meta_options[0] == "Any" and sorted(meta_options[1:]) == ["team: finance (1)", "team: people (1)"]

    # The keyboard: skip link, then the query; Enter searches.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "query"
    page.keyboard.type(QUESTION)
    with page.expect_response("**/v1/search") as response:
        page.keyboard.press("Enter")
    answered = response.value.json()["hits"]
    status = page.locator("#search-status")
    sync_api.expect(status).to_have_text(re.compile(r"^5 pages in \d+ ms, best first$"))
    hits = page.locator("#results .hit")
    assert hits.count() == 5
    scores = [float(t.split()[1]) for t in hits.locator(".score").all_inner_texts()]
    assert scores == sorted(scores, reverse=True) and all(SCORE.match(f"score {s:.3f}") for s in scores)

    # k and both filters narrow the search.
    page.fill("#k", "2")
    page.click("#search-button")
    sync_api.expect(status).to_have_text(re.compile(r"^2 pages in \d+ ms"))
    page.select_option("#filter-doc", label="quarterly report.pdf (3 p.)")
    page.fill("#k", "12")
    page.click("#search-button")
    sync_api.expect(status).to_have_text(re.compile(r"^3 pages in \d+ ms"))
    assert set(hits.locator(".meta:not(.score)").all_inner_texts()) == {
        f"quarterly report.pdf · p. {i}" for i in (1, 2, 3)
    }
    page.select_option("#filter-doc", "")
    page.select_option("#filter-meta", label="team: people (1)")
    page.click("#search-button")
    sync_api.expect(status).to_have_text(re.compile(r"^2 pages in \d+ ms"))
    assert all(t.startswith("handbook.pdf") for t in hits.locator(".meta:not(.score)").all_inner_texts())
    page.select_option("#filter-meta", "")
    page.click("#search-button")
    sync_api.expect(status).to_have_text(re.compile(r"^5 pages in"))

    # Every result shows its thumbnail with its cited regions boxed (random weights: not every page has one).
    assert [h["point_id"] for h in answered] == [hits.nth(i).get_attribute("data-point-id") for i in range(5)]
    for i, hit in enumerate(answered):
        browser.image_shown(f"#results .hit:nth-child({i + 1}) img", "size=thumb")
        assert _drawn(page, f"#results .hit:nth-child({i + 1})") == _boxes(hit["regions"]), hit
        assert ("matched region" in (hits.nth(i).locator("img").get_attribute("alt") or "")) == bool(hit["regions"])
    boxed = next(i for i, h in enumerate(answered) if h["regions"])
    browser.shot("5-results")
    browser.axe("search results")

    # Results are links to the page; Enter on one opens the viewer, with the same boxes over the full page.
    card = hits.nth(boxed)
    assert (card.get_attribute("href") or "").endswith("/image?size=full")
    card.focus()
    page.keyboard.press("Enter")
    viewer = page.locator("#viewer")
    sync_api.expect(viewer).to_have_attribute("open", "")
    full_src = browser.image_shown("#viewer-img", "/image?size=full")
    assert _drawn(page, "#viewer") == _boxes(answered[boxed]["regions"])
    frame = page.eval_on_selector("#viewer .frame", "f => [f.clientWidth, f.clientHeight]")
    shown = page.eval_on_selector("#viewer-img", "i => [i.clientWidth, i.clientHeight]")
    assert frame == shown  # the boxes' 0-1 space is exactly the image
    sync_api.expect(page.locator("#viewer-caption")).to_contain_text("matched region")
    browser.shot("6-viewer")
    browser.axe("the page viewer")

    # Heatmap on and off: the explain PNG for the query, then the page again.
    point_id = full_src.split("/v1/pages/")[1].split("/")[0]
    toggle = page.locator("#viewer-heatmap")
    toggle.click()
    explain = f"/v1/pages/{point_id}/explain?query={quote(QUESTION, safe='')}"
    assert browser.image_shown("#viewer-img", explain) == server.url + explain
    assert toggle.get_attribute("aria-pressed") == "true"
    sync_api.expect(page.locator("#viewer-caption")).to_contain_text("heatmap for")
    toggle.click()
    assert browser.image_shown("#viewer-img", "/image?size=full") == full_src

    # Escape closes it, and the focus goes back to the result that opened it.
    page.keyboard.press("Escape")
    sync_api.expect(viewer).not_to_have_attribute("open", "")
    assert page.evaluate("document.activeElement.dataset.pointId") == point_id
    browser.check_clean()


def test_answer_streams_and_a_new_search_cancels_it(browser: Browser, server: LiveServer) -> None:
    page = browser.page
    page.goto(server.url + "/")
    sync_api.expect(page.locator("#doc-list .doc")).to_have_count(2)

    # Hold the answer's response: while it is in flight its button is busy; a search then aborts it.
    held: list[Any] = []
    page.route("**/v1/answer", lambda route: held.append(route))
    failed: list[str] = []
    page.on("requestfailed", lambda r: failed.append(r.url))
    page.fill("#query", QUESTION)
    page.click("#answer-button")
    page.wait_for_function("() => document.getElementById('answer-button').disabled")
    assert page.get_attribute("#answer-button", "aria-busy") == "true" and page.is_enabled("#search-button")
    sync_api.expect(page.locator("#search-status")).to_have_text("Thinking…")
    page.click("#search-button")
    sync_api.expect(page.locator("#search-status")).to_have_text(re.compile(r"^5 pages in"))
    page.wait_for_function("() => !document.getElementById('answer-button').disabled")
    assert page.locator("#answer").is_hidden() and page.get_attribute("#answer-button", "aria-busy") is None
    assert [u for u in failed if u.endswith("/v1/answer")], failed  # the browser aborted the request
    page.unroute("**/v1/answer")
    for route in held:
        try:
            route.abort()
        except Exception:  # noqa: BLE001 - the page already gave the request up
            pass

    # A real answer: tokens stream in, then the cited pages with their regions.
    page.evaluate("""() => {
      window.__answerUpdates = 0;
      new MutationObserver(() => { window.__answerUpdates += 1; })
        .observe(document.getElementById("answer-text"), { childList: true, characterData: true, subtree: true });
    }""")
    page.click("#answer-button")
    status = page.locator("#search-status")
    sync_api.expect(status).to_have_text(re.compile(r"^Answered from \d page\(s\) in \d+\.\d\d s$"))
    assert page.locator("#answer-text").inner_text().strip() and page.evaluate("window.__answerUpdates") >= 1
    sources = page.locator("#answer-sources .hit")
    assert sources.count() >= 1 and f"Answered from {sources.count()} page(s)" in status.inner_text()
    assert page.locator("#results .hit").count() == 0  # answering clears the search results
    browser.image_shown("#answer-sources .hit:first-child img", "size=thumb")
    cited = page.evaluate(
        """q => fetch("/v1/search", {method: "POST", headers: {"Content-Type": "application/json"},
                                     body: JSON.stringify({query: q, k: 3})}).then(r => r.json())""",
        QUESTION,
    )["hits"]
    regions = {h["point_id"]: h["regions"] for h in cited}
    for i in range(sources.count()):
        pid = sources.nth(i).get_attribute("data-point-id")
        assert _drawn(page, f"#answer-sources .hit:nth-child({i + 1})") == _boxes(regions[pid])
    assert any(regions.values())

    # Text without spaces wraps inside its box.
    page.evaluate("document.getElementById('answer-text').textContent += 'x'.repeat(400)")
    assert page.evaluate("(e => e.scrollWidth <= e.clientWidth)(document.getElementById('answer-text'))")
    browser.shot("7-answer")
    browser.axe("an answer")
    browser.check_clean()


def test_paging_through_many_documents(
    chromium: Any, tmp_path_factory: pytest.TempPathFactory, settings: Settings
) -> None:
    """45 documents: 20 a page, Previous/Next, the range said; the 'incomplete' view lists none."""
    many = settings.model_copy(update={"data_dir": tmp_path_factory.mktemp("web-many")})
    rag = RAGPipeline.from_settings(many)
    try:
        with LiveServer(create_app(many, rag)) as live:
            with httpx.Client(base_url=live.url, timeout=120) as c:
                for start in (0, 15, 30):  # at most 20 files an upload
                    files = [
                        ("files", (f"doc {i:02d}.pdf", build_pdf(_half_letter(f"d{i}")), "application/pdf"))
                        for i in range(start, start + 15)
                    ]
                    r = c.post("/v1/documents", files=files)
                    assert r.status_code == 202, r.text
                    assert wait_job(c, r.json()["job_id"], timeout=120)["state"] == "done"
            browser = Browser(chromium, live.url, "narrow")
            try:
                page = browser.page
                # An upload this tab started before a reload (or a server restart): the page picks its job up.
                job = {"id": r.json()["job_id"], "names": [f"doc {i}.pdf" for i in range(30, 45)], "replaces": None}
                browser.context.add_init_script(f"sessionStorage.setItem('colsmol-job', {json.dumps(json.dumps(job))})")
                page.goto(live.url + "/")
                sync_api.expect(page.locator("#upload-status")).to_have_text("Indexing done: 15 pages embedded.")
                sync_api.expect(page.locator("#upload-files li")).to_have_count(15)
                assert page.evaluate("sessionStorage.getItem('colsmol-job')") is None
                docs, where = page.locator("#doc-list .doc"), page.locator("#doc-range")
                sync_api.expect(docs).to_have_count(20)
                sync_api.expect(where).to_have_text("1–20 of 45")
                assert page.is_disabled("#doc-prev")
                page.click("#doc-next")
                sync_api.expect(where).to_have_text("21–40 of 45")
                page.click("#doc-next")
                sync_api.expect(where).to_have_text("41–45 of 45")
                sync_api.expect(docs).to_have_count(5)
                assert page.is_disabled("#doc-next")
                browser.shot("8-paging")
                page.click("#doc-prev")
                sync_api.expect(where).to_have_text("21–40 of 45")
                page.select_option("#doc-state", "incomplete")
                sync_api.expect(page.locator("#doc-status")).to_have_text("No incomplete documents.")
                sync_api.expect(docs).to_have_count(0)
                assert page.locator("#doc-pager").is_hidden()
                browser.check_clean()
            finally:
                browser.close()
    finally:
        rag.close()


def test_docs_page_works_offline_under_its_csp(chromium: Any, server: LiveServer) -> None:
    """Swagger UI at /docs comes from the server itself (no CDN) and runs under the page's CSP."""
    browser = Browser(chromium, server.url)
    try:
        page = browser.page
        page.goto(server.url + "/docs")
        sync_api.expect(page.locator(".swagger-ui .opblock").first).to_be_visible()
        assert page.locator(".swagger-ui .opblock").count() >= 7
        assert "/v1/search" in page.locator(".swagger-ui").inner_text()
        assert "content-security-policy" in {k.lower() for k in page.request.get(server.url + "/docs").headers}
        browser.check_clean()
    finally:
        browser.close()


def test_page_on_another_origin_cannot_upload(
    chromium: Any, server: LiveServer, settings: Settings, tmp_path: Path
) -> None:
    """A page elsewhere posts a no-cors multipart form at the API (no API key: the default); it must not be indexed."""
    import http.server
    import threading

    target = f"{server.url}/v1/documents"
    evil_page = f"""<!doctype html><title>elsewhere</title><script>
      const form = new FormData();
      form.append("files", new Blob(["%PDF-1.4\\n%%EOF\\n"], {{type: "application/pdf"}}), "planted.pdf");
      fetch("{target}", {{method: "POST", mode: "no-cors", body: form}})
        .then(() => {{ document.title = "sent"; }}, () => {{ document.title = "failed"; }});
    </script>""".encode()

    class Elsewhere(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(evil_page)))
            self.end_headers()
            self.wfile.write(evil_page)

        def log_message(self, *args: Any) -> None:
            pass

    uploads = settings.data_dir / "uploads"
    before = set(uploads.iterdir()) if uploads.exists() else set()
    with httpx.Client(base_url=server.url, timeout=30) as c:
        docs_before = c.get("/v1/documents").json()["total"]
    elsewhere = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Elsewhere)
    threading.Thread(target=elsewhere.serve_forever, daemon=True).start()
    browser = Browser(chromium, server.url)
    try:
        statuses: list[int] = []
        browser.page.on("response", lambda r: r.url == target and statuses.append(r.status))
        # "localhost" and "127.0.0.1" are different sites: the browser sends Sec-Fetch-Site: cross-site.
        browser.page.goto(f"http://localhost:{elsewhere.server_address[1]}/")
        browser.page.wait_for_function("document.title !== 'elsewhere'")
        assert statuses == [403], statuses
    finally:
        browser.close()
        elsewhere.shutdown()
    with httpx.Client(base_url=server.url, timeout=30) as c:
        assert c.get("/v1/documents").json()["total"] == docs_before
    assert (set(uploads.iterdir()) if uploads.exists() else set()) == before


def test_heatmap_is_fetched_with_the_key_as_a_blob(chromium: Any, keyed_server: LiveServer) -> None:
    """With a key, <img> cannot send it: the page and its heatmap are fetched with it as blobs, old blobs revoked."""
    browser = Browser(chromium, keyed_server.url)
    with httpx.Client(base_url=keyed_server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as c:
        r = c.post(
            "/v1/documents", files=[("files", ("keyed.pdf", build_pdf(_half_letter("keyed page")), "application/pdf"))]
        )
        assert r.status_code == 202, r.text
        doc_id = wait_job(c, r.json()["job_id"])["report"]["files"][0]["doc_id"]
        page = browser.page
        try:
            browser.context.add_init_script(f"sessionStorage.setItem('colsmol-key', '{API_KEY}')")
            page.goto(keyed_server.url + "/")
            page.fill("#query", "keyed page")
            page.click("#search-button")
            sync_api.expect(page.locator("#search-status")).to_contain_text("page in")
            assert browser.image_shown("#results .hit:first-child img", "size=thumb").startswith("blob:")
            page.locator("#results .hit").first.click()
            page_blob = browser.image_shown("#viewer-img", "/image?size=full")
            assert page_blob.startswith("blob:")
            page.click("#viewer-heatmap")
            heat_blob = browser.image_shown("#viewer-img", f"/explain?query={quote('keyed page', safe='')}")
            assert heat_blob.startswith("blob:") and heat_blob != page_blob
            page.click("#viewer-heatmap")
            assert browser.image_shown("#viewer-img", "/image?size=full").startswith("blob:")
            browser.check_clean()
            # The replaced blob URLs were revoked, not leaked (fetching one fails, and the console says so).
            assert page.evaluate("u => fetch(u).then(() => true, () => false)", heat_blob) is False
        finally:
            browser.close()
            c.delete(f"/v1/documents/{doc_id}")


def test_collection_picker(browser: Browser, server: LiveServer) -> None:
    """The picker lists the collections; choosing one moves search, documents, filters and page images to it."""
    with httpx.Client(base_url=server.url, timeout=60) as c:
        made = c.post("/v1/collections", json={"name": "finance"})
        assert made.status_code in (201, 409), made.text
        if made.status_code == 201:
            files = [("files", ("ledger.pdf", build_pdf(_half_letter("ledger 2024 revenue")), "application/pdf"))]
            r = c.post("/v1/collections/finance/documents", files=files)
            assert r.status_code == 202, r.text
            from tests.test_collections import wait_job as wait_job_at

            job = wait_job_at(c, f"/v1/collections/finance/jobs/{r.json()['job_id']}")
            assert job["state"] == "done", job
    page = browser.page
    page.goto(server.url + "/")
    sync_api.expect(page.locator("#doc-list .doc")).to_have_count(2)
    picker = page.locator("#collection")
    assert picker.locator("option").all_inner_texts() == ["colsmol (default)", "finance"]
    assert picker.input_value() == "colsmol"

    with page.expect_response("**/v1/collections/finance/documents?*"):
        picker.select_option("finance")
    sync_api.expect(page.locator("#doc-list .doc")).to_have_count(1)
    assert page.locator("#filter-doc option").all_inner_texts() == ["All documents (1)", "ledger.pdf (1 p.)"]
    page.fill("#query", "revenue")
    with page.expect_response("**/v1/collections/finance/search") as response:
        page.click("#search-button")
    assert [h["file_name"] for h in response.value.json()["hits"]] == ["ledger.pdf"]
    browser.image_shown("#results .hit:nth-child(1) img", "/v1/collections/finance/pages/")
    browser.shot("8-collection")
    browser.axe("a chosen collection")

    # The choice stays for the tab; back to the default, its documents come back.
    page.reload()
    sync_api.expect(page.locator("#doc-list .doc")).to_have_count(1)
    assert page.locator("#collection").input_value() == "finance"
    page.locator("#collection").select_option("colsmol")
    sync_api.expect(page.locator("#doc-list .doc")).to_have_count(2)
    browser.check_clean()
