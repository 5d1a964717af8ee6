"""The web service: a page that colorizes photos in the browser, and the API behind it (FastAPI).

    POST /api/colorize   the photo as multipart/form-data field `image` (or as the raw request body);
                         saturation (0-4, default 1), temperature (above 0, at most 10; the classification
                         head's dial, default the model's), model (index, default 0), format (png | jpeg) as
                         query parameters or form fields  ->  the colorized photo at its full resolution
    GET  /api/health     JSON: the loaded models (index, label) and the upload limits
    GET  /               the page (static/index.html); OpenAPI docs at /docs, served from here (no CDN)

Each model is loaded once and shared by all requests (`Colorizer` serialises the network call). Uploads stay
in memory: the body is read with a byte limit (a larger Content-Length is refused before reading anything),
the image header is checked against a pixel limit before decoding, and nothing is written to disk. Bodies
are read first, before a work slot is taken, at most `max_uploading` at once, each within a deadline: after
UPLOAD_GRACE_S seconds it must keep arriving at MIN_UPLOAD_RATE bytes/s on average, or the answer is 408 (a
client that trickles its upload a byte at a time holds no work slot, and only for seconds). Then at most
`max_running` photos are colorized at once and `max_waiting` more wait; past either bound a request is
answered 503 with Retry-After at once, so memory stays bounded whatever clients send. uvicorn caps the
connections (MAX_CONNECTIONS; 503 past it).

Every error is JSON {"detail": "one line for people"} (the Error schema): 400 malformed multipart or an
abandoned upload, 408 an upload too slow, 413 body or pixels over the limit (decompression bombs included),
415 not an image, 422 a broken image or a bad parameter, 503 busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import logging
import re
import signal
import threading
from pathlib import Path
from typing import Annotated, Literal

import fastapi_offline
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from koalarization.config import MAX_SATURATION, MAX_TEMPERATURE, SERVE_HOST, SERVE_PORT, in_range
from koalarization.data import images
from koalarization.errors import KoalarizationError
from koalarization.inference.colorize import Colorizer
from koalarization.run import TrainedRun

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
# swagger-ui's dist files as the fastapi-offline package ships them, so /docs works without a network.
SWAGGER_UI = Path(fastapi_offline.__file__).with_name("static")
MAX_UPLOAD_BYTES = 32 * 1024 * 1024  # a 12 MP JPEG is 3-8 MB, a 12 MP PNG up to ~30 MB
MAX_FORM_FIELDS = 8  # the image and its three options, plus room for a client's own fields (ignored)
FORM_OVERHEAD = 64 * 1024  # multipart boundaries, part headers and the small fields around the image
MAX_RUNNING = 2  # photos colorized at once; more would only queue for the same cores and memory
# Requests admitted to wait for those: each holds at most its upload (MAX_UPLOAD_BYTES) meanwhile, so memory
# is bounded by MAX_RUNNING photos' working memory plus 8 uploads. The page sends one upload at a time, so
# eight people can use it at once; a ninth request is answered 503 at once rather than queued without end.
MAX_WAITING = 6
RETRY_AFTER_S = 5  # a 12 MP photo takes ~2 s on 2 cores: by then a slot is usually free
MAX_UPLOADING = 16  # bodies being received at once (each at most MAX_UPLOAD_BYTES)
# An upload may take UPLOAD_GRACE_S to start, then must average MIN_UPLOAD_RATE: a 32 MB photo over a
# 256 kbit/s uplink passes (at 32 kB/s it takes 17 minutes); one byte a second is cut off after 5 s.
UPLOAD_GRACE_S = 5.0
MIN_UPLOAD_RATE = 32 * 1024
MAX_CONNECTIONS = 64  # uvicorn's limit_concurrency: open connections and tasks
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg"}
Format = Literal["png", "jpeg"]
FORMATS = "JPEG, PNG, WebP, TIFF or BMP"
FRAME_HEADER = "X-Koalarization-Frame"  # "frame 1 of N" on the answer for an animated or multi-page upload


class Error(BaseModel):
    """The body of every error answer."""

    detail: str = Field(description="what was wrong and what to do, in one line for people")


class ModelInfo(BaseModel):
    index: int = Field(description="the `model` parameter that selects it")
    label: str = Field(description="'shipped' for the weights that ship with koalarization, else the run's folder")
    embedder: str
    image_size: int = Field(description="the network's working size S (the photo is squashed to S x S)")
    loss: Literal["mse", "classification"] = Field(description="mse: one colour per pixel; classification: a "
                                                               "distribution over colours, decoded at `temperature`")
    temperature: float | None = Field(description="the classification head's default temperature; null for mse")


class Health(BaseModel):
    status: Literal["ok"]
    models: list[ModelInfo]
    max_upload_bytes: int
    max_pixels: int
    max_saturation: float = Field(description="the largest `saturation` (the page's slider ends there)")
    formats: list[str]


def megabytes(n: int) -> str:
    """Bytes for people, in MB of 2**20 bytes as the page shows them: 33554432 -> '32 MB', 48e6 -> '45.8 MB'."""
    value, unit = (n / 2**20, "MB") if n >= 2**20 else (n / 1024, "kB")
    return f"{value:.1f}".removesuffix(".0") + f" {unit}"


def _over_limit(size: int, limit: int) -> str:
    """'45.8 MB is over this server's limit of 32 MB'; in bytes where MB would print two equal numbers."""
    shown = megabytes(size), megabytes(limit)
    if shown[0] == shown[1]:
        shown = f"{size:,} bytes", f"{limit:,} bytes"
    return f"{shown[0]} is over this server's limit of {shown[1]}"


def model_labels(runs) -> list[str]:
    """A name per model (TrainedRun, or its weights file) for the page, the API and download names: the
    run's name ('shipped' or its folder); two equal names get their parent folder too, then their position."""
    runs = [TrainedRun.at(r) for r in runs]

    def label(run: TrainedRun, parents: int) -> str:
        return run.name if run.shipped or parents == 1 else "/".join(run.folder.resolve().parts[-parents:])

    labels = [label(r, 1) for r in runs]
    if len(set(labels)) < len(labels):
        labels = [label(r, 2) for r in runs]
    if len(set(labels)) < len(labels):
        labels = [f"{name} #{i + 1}" for i, name in enumerate(labels)]
    return labels


def _one_line(errors: list[dict], name: str | None = None) -> str:
    """Pydantic's validation errors -> 'saturation: Input should be less than or equal to 4 (got '9')'."""
    parts = []
    for err in errors:
        where = name or str(err["loc"][-1] if err["loc"] else "request")
        got = f" (got {str(err['input'])[:40]!r})" if isinstance(err.get("input"), (str, int, float)) else ""
        parts.append(f"{where}: {err['msg']}{got}")
    return "; ".join(parts).replace("\n", " ")


class _InMemoryParser(MultiPartParser):
    # Starlette spools file parts over 1 MB to a temporary file; the body here is already capped in memory.
    spool_max_size = 1 << 62


async def read_body(request: Request, limit: int, photo_limit: int | None = None,
                    grace: float = UPLOAD_GRACE_S, min_rate: float = MIN_UPLOAD_RATE) -> bytes:
    """The request body, or 413 as soon as it is known to be larger than `limit` bytes, or 408 when it comes
    too slowly: by `grace` + n / `min_rate` seconds after the start, more than the n bytes received so far
    must have come (a deadline on every wait for the next piece, so a client that sends nothing is cut
    off too).

    photo_limit: the limit to name in the message (the photo's, when `limit` adds room for form fields).
    """
    named = photo_limit or limit
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"upload of {_over_limit(int(declared), named)}")
    body = bytearray()
    loop = asyncio.get_running_loop()
    started = loop.time()
    chunks = request.stream().__aiter__()
    try:
        while True:
            deadline = started + grace + len(body) / min_rate
            try:
                chunk = await asyncio.wait_for(chunks.__anext__(), max(0.0, deadline - loop.time()))
            except StopAsyncIteration:
                break
            except asyncio.TimeoutError:
                log.warning("upload too slow: %s in %.0f s; answered 408", megabytes(len(body)), loop.time() - started)
                raise HTTPException(408, f"upload too slow ({megabytes(len(body))} in {loop.time() - started:.0f} s): "
                                         f"this server needs at least {megabytes(int(min_rate))}/s after the first "
                                         f"{grace:g} s") from None
            body += chunk
            if len(body) > limit:  # a chunked body has no Content-Length: stop reading right here
                raise HTTPException(413, f"upload is over this server's limit of {megabytes(named)}")
    except ClientDisconnect:
        # Nobody is left to read an answer; one log line says what happened (Starlette would log a traceback).
        log.warning("upload abandoned: the client disconnected after sending %s", megabytes(len(body)))
        raise HTTPException(400, "the client disconnected before the upload was complete") from None
    return bytes(body)


async def read_upload(request: Request, max_bytes: int) -> tuple[bytes, str, dict[str, str]]:
    """-> (image bytes, file name, form fields), from a multipart form or a raw image body."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        return await read_body(request, max_bytes), "upload", {}
    body = await read_body(request, max_bytes + FORM_OVERHEAD, max_bytes)

    async def stream():
        yield body

    try:
        form = await _InMemoryParser(request.headers, stream(), max_files=1, max_fields=MAX_FORM_FIELDS).parse()
    except MultiPartException as err:
        raise HTTPException(400, f"malformed multipart upload ({err.message})") from None
    upload = form.get("image")
    if upload is None or isinstance(upload, str):
        raise HTTPException(422, "no photo: send it as the multipart file field 'image'")
    data, name = await upload.read(), upload.filename or "upload"
    await upload.close()
    if len(data) > max_bytes:
        raise HTTPException(413, f"{name}: {_over_limit(len(data), max_bytes)}")
    fields = {key: value for key, value in form.items() if isinstance(value, str)}
    return data, name, fields


# images.ImageError's kinds -> the answer's status
STATUS = {"pixels": 413, "format": 415, "broken": 422}


def decode_upload(data: bytes, name: str, max_pixels: int):
    """Image bytes -> (uint8 RGB (H, W, 3), upright; images.frame_note: "frame 1 of N" for a file of several
    frames, else None), decoded once; the pixel limit is checked from the header before any pixel is."""
    try:
        return images.load_rgb_bytes(data, name, max_pixels)
    except images.ImageError as err:
        detail = f"{name}: not an image (send {FORMATS})" if err.kind == "format" else str(err)
        raise HTTPException(STATUS[err.kind], detail) from None


def encode(rgb, fmt: str) -> bytes:
    buffer = io.BytesIO()
    if fmt == "png":
        Image.fromarray(rgb).save(buffer, format="PNG", compress_level=3)  # ~2x faster than 6, ~10 % larger
    else:
        Image.fromarray(rgb).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _file_name(text: str) -> str:
    """Safe in a Content-Disposition header and on any file system."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


def _error_responses(codes: dict[int, str]) -> dict:
    responses = {code: {"model": Error, "description": text} for code, text in codes.items()}
    if 503 in responses:
        responses[503]["headers"] = {"Retry-After": {"description": "seconds to wait before sending again",
                                                     "schema": {"type": "integer"}}}
    return responses


def create_app(runs: list, max_upload_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = images.MAX_PIXELS,
               embedder_weights: str | None = None, max_running: int = MAX_RUNNING,
               max_waiting: int = MAX_WAITING, max_uploading: int = MAX_UPLOADING) -> FastAPI:
    """The app with one Colorizer per run (TrainedRun or weights file; one or two, compared side by side).

    max_running: photos colorized at once; max_waiting: further requests admitted to wait for them;
    max_uploading: bodies received at once, before either.
    """
    colorizers = [Colorizer(r, embedder_weights=embedder_weights) for r in runs]
    labels = model_labels([c.run for c in colorizers])
    # Requests reading their upload, waiting or running; a waiting one holds a worker thread (anyio has 40).
    admitted = threading.BoundedSemaphore(max_running + max_waiting)
    uploading = threading.BoundedSemaphore(max_uploading)
    busy = threading.BoundedSemaphore(max_running)
    app = FastAPI(title="Koalarization", summary="Colorize photos at their full resolution.",
                  docs_url=None, redoc_url=None)
    _add_page_and_docs(app)

    @app.get("/api/health")
    async def health() -> Health:
        # async: answered on the event loop even while every worker thread is busy with photos.
        return Health(status="ok", max_upload_bytes=max_upload_bytes, max_pixels=max_pixels,
                      max_saturation=MAX_SATURATION,
                      formats=list(MEDIA_TYPES),
                      models=[ModelInfo(index=i, label=labels[i], embedder=c.config.model.embedder,
                                        image_size=c.size, loss=c.config.model.loss, temperature=c.temperature())
                              for i, c in enumerate(colorizers)])

    last = len(colorizers) - 1
    models = ", ".join(f"{i} = {label}" for i, label in enumerate(labels))

    @app.post("/api/colorize", response_class=Response, openapi_extra=_upload_doc(last),
              **_colorize_doc(models, max_upload_bytes, max_pixels, max_uploading, max_running, max_waiting))
    async def colorize(
        request: Request,
        saturation: float = Query(1.0, ge=0.0, le=MAX_SATURATION, description="0 gray, 1 as predicted"),
        temperature: float | None = Query(None, gt=0.0, le=MAX_TEMPERATURE,
                                          description="models with loss 'classification' only: 1 = the mean "
                                                      "colour (pale), smaller = more vivid; default the model's"),
        model: int = Query(0, ge=0, le=last, description=f"index of the model: {models}"),
        format: Format = Query("png"),  # noqa: A002 - the API's name
    ):
        # The body first, at most max_uploading at once and within read_body's deadline: a slow client holds
        # an upload place for seconds, never a work slot.
        with _slot(uploading, f"{max_uploading} uploads are being received"):
            data, name, fields = await read_upload(request, max_upload_bytes)
        options = _with_form_fields({"saturation": saturation, "temperature": temperature, "model": model,
                                     "format": format}, fields, last)
        chosen = colorizers[options["model"]]
        try:
            chosen.temperature(options["temperature"])  # MSE weights have none: 422 before any work
        except KoalarizationError as err:
            raise HTTPException(422, f"model {options['model']} ({labels[options['model']]}): {err}") from None

        def work() -> tuple[bytes, str | None]:
            with busy:  # bounds memory: each photo in flight needs ~25 bytes per pixel (2.2 GB at the limit)
                rgb, note = decode_upload(data, name, max_pixels)
                return encode(chosen.colorize(rgb, options["saturation"], options["temperature"]),
                              options["format"]), note

        with _slot(admitted, f"{max_running} photos are being colorized and {max_waiting} more are waiting"):
            body, note = await run_in_threadpool(work)
        # Two models' results of one photo must not get the same file name.
        label = labels[options["model"]] if len(colorizers) > 1 else None
        return _answer(body, options["format"], _disposition(name, label, options["format"]), note)

    return app


@contextlib.contextmanager
def _slot(slots: threading.BoundedSemaphore, busy: str):
    """Hold one of `slots` for the block, or answer 503 at once (`busy`: what holds them all) with Retry-After."""
    if not slots.acquire(blocking=False):
        raise HTTPException(503, f"busy: {busy}; send again in {RETRY_AFTER_S} s",
                            headers={"Retry-After": str(RETRY_AFTER_S)})
    try:
        yield
    finally:
        slots.release()


def _answer(body: bytes, fmt: str, disposition: str, note: str | None) -> Response:
    headers = {"Content-Disposition": disposition}
    if note:  # an animated or multi-page file: say which frame the answer is
        headers[FRAME_HEADER] = note
    return Response(body, media_type=MEDIA_TYPES[fmt], headers=headers)


def _add_page_and_docs(app: FastAPI) -> None:
    """The page, the OpenAPI docs (served from here: no CDN), their files, and one-line validation errors."""
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.mount("/swagger-ui", StaticFiles(directory=SWAGGER_UI), name="swagger-ui")

    @app.exception_handler(RequestValidationError)
    async def one_line_validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
        # FastAPI's default is a list of objects; every answer here has the one Error shape.
        return JSONResponse({"detail": _one_line(err.errors())}, status_code=422)

    @app.get("/", include_in_schema=False)
    def page():
        # Everything the page uses is served from here: no CDN, no inline script.
        csp = "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'"
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": csp})

    @app.get("/docs", include_in_schema=False)
    def docs():
        return get_swagger_ui_html(
            openapi_url=app.openapi_url, title="Koalarization API",
            swagger_js_url="/swagger-ui/swagger-ui-bundle.js", swagger_css_url="/swagger-ui/swagger-ui.css",
            swagger_favicon_url="/static/favicon.svg",
            swagger_ui_parameters={"validatorUrl": None})  # the default validator is a remote service


def _colorize_doc(models: str, max_upload_bytes: int, max_pixels: int, max_uploading: int, max_running: int,
                  max_waiting: int) -> dict:
    """POST /api/colorize's description and answers, for the OpenAPI page."""
    limits = (f"The photo: {FORMATS}, at most {megabytes(max_upload_bytes)} and {images.pixel_count(max_pixels)} "
              f"pixels. Send it as the multipart/form-data file field `image` (form fields `saturation`, "
              f"`temperature`, `model` and `format` override the query parameters of the same names) or as the "
              f"raw request "
              f"body. Models: {models}. Uploads slower than {megabytes(MIN_UPLOAD_RATE)}/s after the first "
              f"{UPLOAD_GRACE_S:g} s are answered 408. At most {max_uploading} uploads are received, "
              f"{max_running} photos colorized and {max_waiting} more wait at once; past that the answer is 503 "
              f"with Retry-After.")
    ok = {"content": {t: {} for t in MEDIA_TYPES.values()},
          "description": "the colorized photo, same size as the upload (its first frame for an animated or "
                         f"multi-page file, said in {FRAME_HEADER})",
          "headers": {FRAME_HEADER: {"description": "'frame 1 of N': the upload held N frames and the first was "
                                                    "colorized", "schema": {"type": "string"}}}}
    return {"description": limits, "responses": {200: ok, **_error_responses({
        400: "malformed multipart upload, or the client disconnected mid-upload",
        408: f"upload too slow: under {megabytes(MIN_UPLOAD_RATE)}/s after the first {UPLOAD_GRACE_S:g} s",
        413: f"upload over {megabytes(max_upload_bytes)} or photo over {images.pixel_count(max_pixels)} pixels "
             "(decompression bombs included)",
        415: f"not an image ({FORMATS})",
        422: "a broken image, or a parameter out of range",
        503: "busy: too many photos in flight; send again after Retry-After seconds"})}}


@functools.cache
def _form_types(last_model: int) -> dict[str, TypeAdapter]:
    """The form fields' validators, the query parameters' bounds (built once: a TypeAdapter is not cheap)."""
    return {"saturation": TypeAdapter(Annotated[float, Field(ge=0.0, le=MAX_SATURATION)]),
            "temperature": TypeAdapter(Annotated[float, Field(gt=0.0, le=MAX_TEMPERATURE)]),
            "model": TypeAdapter(Annotated[int, Field(ge=0, le=last_model)]), "format": TypeAdapter(Format)}


def _with_form_fields(options: dict, fields: dict[str, str], last_model: int) -> dict:
    """The query parameters `options` with the form fields of the same names instead, checked to the same
    bounds (422 naming the field)."""
    types = _form_types(last_model)
    options = dict(options)
    for key in [key for key in options if key in fields]:
        try:
            options[key] = types[key].validate_python(fields[key])
        except ValidationError as err:
            raise HTTPException(422, _one_line(err.errors(), key)) from None
    return options


def _disposition(upload_name: str, label: str | None, fmt: str) -> str:
    """Content-Disposition of an answer: the upload's name, '-colorized', the model's label if given."""
    stem = _file_name(Path(upload_name).stem)[:80] or "photo"
    label = "-" + _file_name(label) if label else ""
    return f'inline; filename="{stem}-colorized{label}.{"jpg" if fmt == "jpeg" else "png"}"'


def _upload_doc(last_model: int) -> dict:
    """The request body, for the OpenAPI page (the endpoint parses it itself, in memory)."""
    return {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["image"],
                                           # other fields are ignored, up to MAX_FORM_FIELDS parts in all
                                           "additionalProperties": False, "properties": {
            "image": {"type": "string", "format": "binary", "description": FORMATS},
            "saturation": {"type": "number", "minimum": 0, "maximum": MAX_SATURATION},
            "temperature": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_TEMPERATURE},
            "model": {"type": "integer", "minimum": 0, "maximum": last_model},
            "format": {"type": "string", "enum": list(MEDIA_TYPES)},
        }}},
        "image/*": {"schema": {"type": "string", "format": "binary"}},
    }}}


def _exit_on_signal(signum, frame) -> None:
    raise SystemExit(128 + signum)


def serve(runs: list, host: str = SERVE_HOST, port: int = SERVE_PORT, **app_options) -> None:
    """Run the app with uvicorn until interrupted (Ctrl-C) or terminated (SIGTERM)."""
    import uvicorn

    in_range("port", port, at_least=0, at_most=65535)  # 0: any free port
    # Python's default SIGTERM action ends the process without running atexit handlers, and uvicorn re-raises
    # the SIGTERM it caught once it has shut down gracefully. TensorFlow deletes its autograph modules
    # (__autograph_generated_file*.py in TMPDIR) in an atexit handler: leaving through SystemExit runs it.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    uvicorn.run(create_app(runs, **app_options), host=host, port=port, log_level="info",
                limit_concurrency=MAX_CONNECTIONS)
