"""The web page at ``/``, in a real headless Chromium against a live uvicorn on loopback (tiny random models).

The page is driven like a person would: pick a PDF in the file input and upload it, wait for the job to
finish, search, ask, enlarge a cited page and toggle its heatmap. The browser is the system's
``/usr/bin/chromium`` (never a download) driven by Playwright; without either, these tests skip.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from api.app import create_app
from indexer.settings import Settings
from rag.pipeline import RAGPipeline
from testkit.pdfs import LETTER, PageSpec, build_pdf, write_pdf
from tests.conftest import tiny_settings
from tests.test_api import LiveServer, wait_job

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.is_file():
    pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install playwright; no browser download needed)"
)

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


def _half_letter(*texts: str) -> list[PageSpec]:
    return [PageSpec(LETTER[0] / 2, LETTER[1] / 2, text=t) for t in texts]


@pytest.fixture(scope="module")
def settings(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return tiny_settings(tiny_models, tmp_path_factory.mktemp("web-data"), max_new_tokens=8, dpi=50)


@pytest.fixture(scope="module")
def pipeline(settings: Settings) -> Iterator[RAGPipeline]:
    rag = RAGPipeline.from_settings(settings)
    yield rag
    rag.close()


@pytest.fixture(scope="module")
def server(settings: Settings, pipeline: RAGPipeline) -> Iterator[LiveServer]:
    with LiveServer(create_app(settings, pipeline)) as live:
        yield live


@pytest.fixture(scope="module")
def keyed_server(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """An app that needs ``Authorization: Bearer API_KEY`` on /v1, over its own (empty) index."""
    keyed = settings.model_copy(update={"api_key": API_KEY, "data_dir": tmp_path_factory.mktemp("web-keyed")})
    rag = RAGPipeline.from_settings(keyed)
    try:
        with LiveServer(create_app(keyed, rag)) as live:
            yield live
    finally:
        rag.close()


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        yield p


class Browser:
    """One page in a fresh Chromium profile, recording every request and every script error."""

    def __init__(self, playwright: Any, profile: Path, origin: str) -> None:
        self.origin = origin
        self.context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        self.page = self.context.pages[0] if self.context.pages else self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(f"console: {m.text}"))
        self.page.on("response", lambda r: r.status >= 400 and self.errors.append(f"HTTP {r.status}: {r.url}"))
        # Every Content-Security-Policy violation, as the page sees it (they are also console errors).
        self.context.add_init_script(CSP_WATCH)

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
        return self.page.eval_on_selector(selector, "img => img.src")


@pytest.fixture
def browser(playwright: Any, server: LiveServer, tmp_path: Path) -> Iterator[Browser]:
    b = Browser(playwright, tmp_path / "profile", server.url)
    yield b
    b.context.close()


def test_upload_search_answer_enlarge_heatmap(browser: Browser, server: LiveServer, tmp_path: Path) -> None:
    page = browser.page
    page.goto(server.url + "/")
    assert page.title().startswith("colsmol")

    # Upload a real PDF through the file input; the page polls the job until it is done.
    pdf = write_pdf(tmp_path / "quarterly report.pdf", _half_letter("revenue 2023 was 12 million", "costs", "memo"))
    page.set_input_files("#files", str(pdf))
    page.click("#upload-form button[type=submit]")
    status = page.locator("#upload-status")
    sync_api.expect(status).to_contain_text("Indexing done.", timeout=60_000)
    assert "3 pages embedded" in status.inner_text() and "Errors" not in status.inner_text()
    assert "error" not in (status.get_attribute("class") or "")

    # Search: one card per page, each with a thumbnail that loads and a score.
    page.fill("#query", "revenue")
    page.click("#search-form button[value=search]")
    sync_api.expect(page.locator("#search-status")).to_contain_text("3 pages in")
    hits = page.locator("#results .hit")
    assert hits.count() == 3
    for i in range(3):
        assert SCORE.match(hits.nth(i).locator(".score").inner_text()), hits.nth(i).inner_text()
        assert "quarterly report.pdf" in hits.nth(i).locator(".meta").first.inner_text()
        browser.image_shown(f"#results .hit:nth-child({i + 1}) img", "size=thumb")
    scores = [float(hits.nth(i).locator(".score").inner_text().split()[1]) for i in range(3)]
    assert scores == sorted(scores, reverse=True)

    # Ask: tokens stream into the answer box (counted as they land), then the cited pages appear.
    page.evaluate("""() => {
      window.__answerUpdates = 0;
      new MutationObserver(() => { window.__answerUpdates += 1; })
        .observe(document.getElementById("answer-text"), { childList: true, characterData: true, subtree: true });
    }""")
    question = "What was the revenue in 2023?"
    page.fill("#query", question)
    page.click("#search-form button[value=answer]")
    sync_api.expect(page.locator("#search-status")).to_contain_text("Answered from")
    assert page.locator("#answer").is_visible()
    assert page.locator("#answer-text").inner_text().strip(), "no answer text streamed in"
    assert page.evaluate("window.__answerUpdates") >= 1
    sources = page.locator("#answer-sources .hit")
    n_sources = sources.count()
    assert n_sources >= 1
    assert f"Answered from {n_sources} page(s)" in page.locator("#search-status").inner_text()
    assert page.locator("#results .hit").count() == 0  # answering clears the search results
    browser.image_shown("#answer-sources .hit:first-child img", "size=thumb")

    # Enlarge a cited page: the full-size image in the dialog.
    sources.first.click()
    viewer, img, toggle = page.locator("#viewer"), "#viewer-img", page.locator("#viewer-heatmap")
    sync_api.expect(viewer).to_have_attribute("open", "")
    full_src = browser.image_shown(img, "/image?size=full")
    point_id = full_src.split("/v1/pages/")[1].split("/")[0]
    assert toggle.is_visible() and toggle.get_attribute("aria-pressed") == "false"

    # Heatmap on: the image switches to the explain PNG for the question, and it loads.
    toggle.click()
    explain = f"/v1/pages/{point_id}/explain?query={quote(question, safe='')}"
    assert browser.image_shown(img, explain) == server.url + explain  # no key: the API URL itself
    assert toggle.get_attribute("aria-pressed") == "true"
    sync_api.expect(page.locator("#viewer-caption")).to_contain_text("heatmap for")
    heat_size = page.eval_on_selector(img, "i => [i.naturalWidth, i.naturalHeight]")

    # Heatmap off: back to the page image; the overlay has the page's size.
    toggle.click()
    assert browser.image_shown(img, "/image?size=full") == full_src and toggle.get_attribute("aria-pressed") == "false"
    assert page.eval_on_selector(img, "i => [i.naturalWidth, i.naturalHeight]") == heat_size

    page.click("#viewer-close")
    sync_api.expect(viewer).not_to_have_attribute("open", "")
    browser.check_clean()


def test_api_key_images_and_heatmap_as_blobs(playwright: Any, keyed_server: LiveServer, tmp_path: Path) -> None:
    """With a key, <img> cannot send it: thumbnails, the page and its heatmap are fetched with it as blobs."""
    with httpx.Client(base_url=keyed_server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as c:
        files = [("files", ("keyed.pdf", build_pdf(_half_letter("keyed page")), "application/pdf"))]
        r = c.post("/v1/documents", files=files)
        assert r.status_code == 202, r.text
        assert wait_job(c, r.json()["job_id"])["state"] == "done"

    browser = Browser(playwright, tmp_path / "profile", keyed_server.url)
    try:
        page = browser.page
        page.goto(keyed_server.url + "/")

        # Without the key the API refuses, and the page says so.
        page.fill("#query", "keyed page")
        page.click("#search-form button[value=search]")
        sync_api.expect(page.locator("#search-status")).to_contain_text("401")
        browser.errors.clear()  # the browser logs the refused fetch to the console

        page.fill("#api-key", API_KEY)
        page.dispatch_event("#api-key", "change")
        page.click("#search-form button[value=search]")
        sync_api.expect(page.locator("#search-status")).to_contain_text("pages in")
        first = page.locator("#results .hit").first
        assert browser.image_shown("#results .hit:first-child img", "size=thumb").startswith("blob:")

        first.click()
        img, toggle = "#viewer-img", page.locator("#viewer-heatmap")
        page_blob = browser.image_shown(img, "/image?size=full")
        assert page_blob.startswith("blob:")
        toggle.click()
        heat_blob = browser.image_shown(img, "/explain?query=keyed%20page")
        assert heat_blob.startswith("blob:") and heat_blob != page_blob
        toggle.click()
        assert browser.image_shown(img, "/image?size=full").startswith("blob:")
        assert page.evaluate("localStorage.getItem('colsmol-key')") == API_KEY
        browser.check_clean()
        # The replaced blob URLs were revoked, not leaked (fetching one fails, and the console says so).
        assert page.evaluate("u => fetch(u).then(() => true, () => false)", heat_blob) is False
    finally:
        browser.context.close()


def test_docs_page_works_offline_under_its_csp(browser: Browser, server: LiveServer) -> None:
    """Swagger UI at /docs comes from the server itself (no CDN) and runs under the page's CSP."""
    page = browser.page
    page.goto(server.url + "/docs")
    sync_api.expect(page.locator(".swagger-ui .opblock").first).to_be_visible()
    assert page.locator(".swagger-ui .opblock").count() >= 7
    assert "/v1/search" in page.locator(".swagger-ui").inner_text()
    assert "content-security-policy" in {k.lower() for k in page.request.get(server.url + "/docs").headers}
    browser.check_clean()


def test_page_on_another_origin_cannot_upload(
    playwright: Any, server: LiveServer, settings: Settings, tmp_path: Path
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
    browser = Browser(playwright, tmp_path / "profile", server.url)
    try:
        statuses: list[int] = []
        browser.page.on("response", lambda r: r.url == target and statuses.append(r.status))
        # "localhost" and "127.0.0.1" are different sites: the browser sends Sec-Fetch-Site: cross-site.
        browser.page.goto(f"http://localhost:{elsewhere.server_address[1]}/")
        browser.page.wait_for_function("document.title !== 'elsewhere'")
        assert statuses == [403], statuses
    finally:
        browser.context.close()
        elsewhere.shutdown()
    with httpx.Client(base_url=server.url, timeout=30) as c:
        assert c.get("/v1/documents").json()["total"] == docs_before
    assert (set(uploads.iterdir()) if uploads.exists() else set()) == before
