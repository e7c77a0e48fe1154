"""Answers from any OpenAI-compatible vision-language server (vLLM, llama.cpp's llama-server, Ollama, TGI, ...).

The model sees what SmolVLM sees (:mod:`rag.generators.prompt`): the pages, best first, fitted to the page
budget and sent as image parts (``data:`` URLs, JPEG or PNG), then the shared instruction and the question in
one user message. Answers are always streamed (Server-Sent Events), so ``stop`` ends a generation within one
chunk by closing the HTTP response, which servers take as a cancelled request.

Transport is the official ``openai`` client: bounded timeouts (connect, and each read), and retries with
exponential backoff on connection errors, timeouts, 408/409/429 and 5xx (``Retry-After`` honoured up to a
minute). Every failure becomes one :class:`ModelUnavailable` line naming the server, the model and the setting
to change; nothing waits without a deadline.
"""

from __future__ import annotations

import base64
import io
import logging
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, cast
from urllib.parse import urlsplit

from indexer.errors import ConfigError, InvalidRequest, ModelUnavailable
from rag.generators.prompt import PAGE_LONGEST_EDGE, SYSTEM_INSTRUCTION, fit_pages, question_text

if TYPE_CHECKING:
    from openai import OpenAI
    from PIL import Image

    from indexer.settings import Settings

log = logging.getLogger(__name__)

ImageFormat = Literal["jpeg", "png"]
VISION_HINT = (
    "the model must accept images: serve a vision-language model (for llama-server, with its --mmproj "
    "projector or -hf of a vision GGUF)"
)


def normalize_base_url(url: str) -> str:
    """The API base the client appends ``/chat/completions`` to: ``/v1`` is added to a URL without a path.

    >>> normalize_base_url("http://127.0.0.1:8080"), normalize_base_url("http://h:8000/v1/")
    ('http://127.0.0.1:8080/v1', 'http://h:8000/v1')
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(
            f"COLSMOL_GENERATOR_URL {url!r} is not an http(s) URL; give the server's OpenAI API base, "
            "e.g. http://127.0.0.1:8080/v1"
        )
    base = url.strip().rstrip("/")
    return base if parts.path.strip("/") else base + "/v1"


def image_data_url(image: Image.Image, fmt: ImageFormat = "jpeg", quality: int = 90) -> str:
    """``image`` as a ``data:`` URL (what every OpenAI-compatible server accepts in an ``image_url`` part)."""
    buf = io.BytesIO()
    if fmt == "png":
        image.save(buf, format="PNG", optimize=False)
    else:
        image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return f"data:image/{fmt};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


class OpenAIGenerator:
    """A vision-language model behind an OpenAI-compatible ``/v1/chat/completions`` endpoint.

    ``model`` is the name the server knows the model by; ``None`` takes the server's only model (asked once,
    from ``/v1/models``). ``load`` (or the first answer) checks the server answers, serves that model and, unless
    ``check_vision`` is False, that the model sees images. Decoding is greedy (``temperature=0``), as with
    SmolVLM, so the same question gives the same answer where the server allows.
    """

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        api_key: str | None = None,
        *,
        instruction: str = SYSTEM_INSTRUCTION,
        image_longest_edge: int | None = PAGE_LONGEST_EDGE,
        image_format: ImageFormat = "jpeg",
        timeout_s: float = 60.0,
        connect_timeout_s: float = 5.0,
        max_retries: int = 2,
        temperature: float = 0.0,
        check_vision: bool = True,
    ) -> None:
        if image_format not in ("jpeg", "png"):
            raise ConfigError(f"image_format must be jpeg or png, got {image_format!r}")
        if timeout_s <= 0 or connect_timeout_s <= 0 or max_retries < 0:
            raise ConfigError("timeouts must be positive and max_retries at least 0")
        self.base_url = normalize_base_url(base_url)
        self.model = model or None
        self.model_id = model or f"(the only model at {self.base_url})"
        # Never fall back to the OPENAI_API_KEY of the environment: it would be sent to whatever server this is.
        self._api_key = api_key or "none"
        self.instruction = instruction
        self.image_longest_edge = image_longest_edge
        self.image_format: ImageFormat = image_format
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.max_retries = max_retries
        self.temperature = temperature
        self.check_vision = check_vision
        self._client: OpenAI | None = None
        self._checked = False  # the server answered, serves self.model, and the model sees images
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ connection
    @property
    def loaded(self) -> bool:
        return self._checked

    def _new_client(self) -> OpenAI:
        import openai

        return openai.OpenAI(
            base_url=self.base_url,
            api_key=self._api_key,
            timeout=openai.Timeout(self.timeout_s, connect=self.connect_timeout_s),
            max_retries=self.max_retries,
        )

    def load(self) -> OpenAIGenerator:
        """Check the server answers, serves the model (``GET /v1/models``) and the model sees images (two
        one-token completions, see :meth:`_check_vision`); ModelUnavailable otherwise."""
        self._ready()
        return self

    def _ready(self) -> tuple[OpenAI, str]:
        with self._lock:
            if self._client is None:
                self._client = self._new_client()
            if not self._checked:
                self._check_model(self._client)
                if self.check_vision:
                    self._check_vision(self._client)
                self._checked = True
            assert self.model is not None
            return self._client, self.model

    def _check_model(self, client: OpenAI) -> None:
        import openai

        try:
            served = [m.id for m in client.models.list()]
        except openai.NotFoundError:
            # A server without the listing (rare): the first answer will say whether the model exists.
            if self.model is None:
                raise ModelUnavailable(
                    f"the answer server at {self.base_url} does not list its models (GET /models is 404); "
                    "set COLSMOL_GENERATOR_MODEL_NAME to the model's name"
                ) from None
            log.warning("%s does not list its models; using %r unchecked", self.base_url, self.model)
            return
        except openai.OpenAIError as exc:
            raise self._explain(exc) from None
        if self.model is None:
            if len(served) != 1:
                raise ModelUnavailable(
                    f"the answer server at {self.base_url} serves {len(served)} models ({', '.join(served) or 'none'});"
                    " set COLSMOL_GENERATOR_MODEL_NAME to one of them"
                )
            self.model = served[0]
            self.model_id = served[0]
        elif self.model not in served:
            raise ModelUnavailable(
                f"the answer server at {self.base_url} has no model {self.model!r} (it serves: "
                f"{', '.join(served) or 'none'}); set COLSMOL_GENERATOR_MODEL_NAME to one of them"
            )

    def _check_vision(self, client: OpenAI) -> None:
        """Refuse a model that does not see images. Servers differ: some answer 400 to an image part, others
        (a text-only model behind llama-cpp-python's server, for one) drop it and answer from the text alone,
        which would give answers that never read the pages. So a one-token completion with a small image must
        cost more prompt tokens than one without (skipped when the server reports no usage)."""
        import openai
        from PIL import Image

        probe = image_data_url(Image.new("RGB", (64, 64), "white"), "png")

        def prompt_tokens(with_image: bool) -> int | None:
            content: list[dict[str, Any]] = [{"type": "text", "text": "Describe the image."}]
            if with_image:
                content.insert(0, {"type": "image_url", "image_url": {"url": probe}})
            done = client.chat.completions.create(
                model=cast(str, self.model),
                messages=cast(Any, [{"role": "user", "content": content}]),
                max_tokens=1,
                temperature=0,
            )
            return done.usage.prompt_tokens if done.usage is not None else None

        try:
            text_only, with_image = prompt_tokens(False), prompt_tokens(True)
        except openai.OpenAIError as exc:
            raise self._explain(exc) from None
        if text_only is not None and with_image is not None and with_image <= text_only:
            raise ModelUnavailable(
                f"the answer server at {self.base_url} ignores the images sent to model {self.model!r} (an image "
                f"added no prompt tokens); {VISION_HINT}"
            )

    def _explain(self, exc: Exception) -> ModelUnavailable:
        """One line for a failed call: what the server did, and what to change."""
        import openai

        where = f"the answer server at {self.base_url}"
        model = f"model {self.model!r}" if self.model else "its model"
        if isinstance(exc, openai.APITimeoutError):
            return ModelUnavailable(
                f"{where} did not answer within {self.timeout_s:g} s (after {self.max_retries} retries); "
                "check that it is running and not overloaded"
            )
        if isinstance(exc, openai.APIConnectionError):
            return ModelUnavailable(
                f"{where} cannot be reached ({_cause(exc)}); check COLSMOL_GENERATOR_URL and that the server runs"
            )
        if isinstance(exc, openai.APIStatusError):
            status = exc.response.status_code
            detail = _server_message(exc)
            if status == 429:
                return ModelUnavailable(
                    f"{where} is rate limiting (429 after {self.max_retries} retries): {detail}; retry later"
                )
            if status in (401, 403):
                return ModelUnavailable(
                    f"{where} refused the API key ({status}: {detail}); set COLSMOL_GENERATOR_API_KEY"
                )
            if status == 404:
                return ModelUnavailable(
                    f"{where} has no {model} or no chat completions endpoint (404: {detail}); check "
                    "COLSMOL_GENERATOR_MODEL_NAME and that COLSMOL_GENERATOR_URL ends with the API base (…/v1)"
                )
            if status in (400, 413, 415, 422):
                return ModelUnavailable(
                    f"{where} rejected the request ({status}: {detail}); {VISION_HINT}, with a context long "
                    "enough for the pages"
                )
            return ModelUnavailable(f"{where} failed ({status} after {self.max_retries} retries: {detail})")
        return ModelUnavailable(f"{where} sent a response colsmol cannot read ({type(exc).__name__}: {exc})")

    # ------------------------------------------------------------------ prompting
    def build_messages(self, question: str, pages: Sequence[Image.Image]) -> list[dict[str, Any]]:
        """One user message: every page (fitted to the page budget) as an image part, then instruction + question."""
        text = question_text(question, self.instruction)
        content: list[dict[str, Any]] = [
            {"type": "image_url", "image_url": {"url": image_data_url(img, self.image_format)}}
            for img in fit_pages(pages, self.image_longest_edge)
        ]
        content.append({"type": "text", "text": text})
        return [{"role": "user", "content": content}]

    # ------------------------------------------------------------------ generation
    def generate(
        self,
        question: str,
        pages: Sequence[Image.Image],
        max_new_tokens: int = 256,
        stop: threading.Event | None = None,
        page_ids: Sequence[str] | None = None,
    ) -> str:
        """The whole answer text: the streamed pieces joined, whitespace trimmed (``page_ids`` are not needed)."""
        return "".join(self.stream(question, pages, max_new_tokens, stop)).strip()

    def stream(
        self,
        question: str,
        pages: Sequence[Image.Image],
        max_new_tokens: int = 256,
        stop: threading.Event | None = None,
        page_ids: Sequence[str] | None = None,
    ) -> Iterator[str]:
        """Text pieces as the server sends them. Setting ``stop`` (or closing this iterator) closes the response."""
        import openai

        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise InvalidRequest("max_new_tokens must be at least 1")
        messages = self.build_messages(question, pages)  # validates the question before any network call
        client, model = self._ready()
        try:
            response = client.chat.completions.create(
                model=model,
                messages=cast(Any, messages),  # plain dicts in the documented shape
                max_tokens=max_new_tokens,
                temperature=self.temperature,
                stream=True,
            )
        except openai.OpenAIError as exc:
            raise self._explain(exc) from None
        produced = False
        try:
            for chunk in response:
                if stop is not None and stop.is_set():
                    return
                if not chunk.choices:
                    continue
                piece = chunk.choices[0].delta.content
                if not produced and piece:
                    piece = piece.lstrip()
                if piece:
                    produced = True
                    yield piece
        except (openai.OpenAIError, ValueError) as exc:  # dropped mid-stream, a read timeout, an error event
            raise self._explain(exc) from None
        finally:
            response.close()  # early close or stop: the server sees the client go and stops generating
        if not produced and not (stop is not None and stop.is_set()):
            raise ModelUnavailable(
                f"the answer server at {self.base_url} returned no text for model {model!r}; check that the "
                "model is a chat (instruct) model and that its chat template accepts images"
            )

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
            self._client = None
            self._checked = False


def _cause(exc: BaseException) -> str:
    """The innermost cause's message (``Connection refused``), not the client's generic 'Connection error.'."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return str(exc) or type(exc).__name__


def _server_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error", body)
        message = error.get("message") if isinstance(error, dict) else error
        if message:
            return " ".join(str(message).split())[:300]
    return " ".join(str(getattr(exc, "message", exc)).split())[:300]



def from_settings(settings: Settings) -> OpenAIGenerator:
    """The generator the ``COLSMOL_GENERATOR_URL`` / ``_API_KEY`` / ``_MODEL_NAME`` / ``_TIMEOUT_S`` /
    ``_MAX_RETRIES`` settings describe."""
    if not settings.generator_url:
        raise ConfigError(
            "COLSMOL_GENERATOR_BACKEND=openai needs COLSMOL_GENERATOR_URL, the server's OpenAI API base "
            "(e.g. http://127.0.0.1:8080/v1 for llama-server, http://127.0.0.1:11434/v1 for Ollama)"
        )
    return OpenAIGenerator(
        settings.generator_url,
        model=settings.generator_model_name,
        api_key=settings.generator_api_key,
        timeout_s=settings.generator_timeout_s,
        connect_timeout_s=min(5.0, settings.generator_timeout_s),
        max_retries=settings.generator_max_retries,
        image_longest_edge=settings.generator_page_edge,
    )
