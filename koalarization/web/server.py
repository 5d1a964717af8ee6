"""The web service: a page that colorizes photos in the browser, and the API behind it (FastAPI).

    POST /api/colorize   the photo as multipart/form-data field `image` (or as the raw request body);
                         saturation (0-4, default 1), model (index, default 0), format (png | jpeg) as
                         query parameters or form fields  ->  the colorized photo at its full resolution
    GET  /api/health     JSON: the loaded models and the upload limits
    GET  /               the page (static/index.html); OpenAPI docs at /docs

Each model is loaded once and shared by all requests (`Colorizer` serialises the network call). Uploads stay
in memory: the body is read with a byte limit (a larger Content-Length is refused before reading anything),
the image header is checked against a pixel limit before decoding, and nothing is written to disk.

Errors are JSON {"detail": "..."}: 413 body or pixels over the limit (decompression bombs included),
415 not an image, 422 a broken image or bad parameters, 400 malformed multipart.
"""

from __future__ import annotations

import io
import re
import threading
import warnings
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image, UnidentifiedImageError
from starlette.formparsers import MultiPartException, MultiPartParser

from koalarization import images
from koalarization.colorize import Colorizer

STATIC = Path(__file__).with_name("static")
MAX_UPLOAD_BYTES = 32 * 1024 * 1024  # a 12 MP JPEG is 3-8 MB, a 12 MP PNG up to ~30 MB
MAX_PIXELS = 40_000_000  # a 40 MP photo needs ~1 GB of working memory (~25 bytes per pixel)
FORM_OVERHEAD = 64 * 1024  # multipart boundaries, part headers and the small fields around the image
MAX_CONCURRENT = 2  # photos colorized at once; more would only queue for the same cores and memory
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg"}

UPLOAD_DOC = {  # the request body, for the OpenAPI page (the endpoint parses it itself, in memory)
    "requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
            "image": {"type": "string", "format": "binary", "description": "JPEG, PNG, WebP, TIFF or BMP"},
            "saturation": {"type": "number", "minimum": 0, "maximum": 4},
            "model": {"type": "integer", "minimum": 0},
            "format": {"type": "string", "enum": list(MEDIA_TYPES)},
        }}},
        "image/*": {"schema": {"type": "string", "format": "binary"}},
    }},
}


class _InMemoryParser(MultiPartParser):
    # Starlette spools file parts over 1 MB to a temporary file; the body here is already capped in memory.
    spool_max_size = 1 << 62


async def read_body(request: Request, limit: int, photo_limit: int | None = None) -> bytes:
    """The request body, or 413 as soon as it is known to be larger than `limit` bytes.

    photo_limit: the limit to name in the message (the photo's, when `limit` adds room for form fields).
    """
    named = photo_limit or limit
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"upload of {int(declared)} bytes is over this server's limit of {named} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:  # a chunked body has no Content-Length: stop reading right here
            raise HTTPException(413, f"upload is over this server's limit of {named} bytes")
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
        form = await _InMemoryParser(request.headers, stream(), max_files=1, max_fields=8).parse()
    except MultiPartException as err:
        raise HTTPException(400, f"malformed multipart upload ({err.message})") from None
    upload = form.get("image")
    if upload is None or isinstance(upload, str):
        raise HTTPException(422, "no photo: send it as the multipart file field 'image'")
    data, name = await upload.read(), upload.filename or "upload"
    await upload.close()
    if len(data) > max_bytes:
        raise HTTPException(413, f"{name}: {len(data)} bytes is over this server's limit of {max_bytes} bytes")
    fields = {key: value for key, value in form.items() if isinstance(value, str)}
    return data, name, fields


def decode(data: bytes, name: str, max_pixels: int):
    """Image bytes -> uint8 RGB (H, W, 3), upright; the header is checked before any pixel is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                width, height = probe.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise HTTPException(413, f"{name}: too many pixels (decompression bomb?); "
                                 f"this server accepts at most {max_pixels}") from None
    except UnidentifiedImageError:
        raise HTTPException(415, f"{name}: not an image (send JPEG, PNG, WebP, TIFF or BMP)") from None
    except Exception as err:  # noqa: BLE001 - Pillow raises many kinds for a broken header
        raise HTTPException(422, f"{name}: cannot read the image header ({err})") from None
    if width * height > max_pixels:
        raise HTTPException(413, f"{name}: {width}x{height} is {width * height} pixels; "
                                 f"this server accepts at most {max_pixels}")
    try:
        return images.load_rgb_bytes(data, name)
    except images.ImageError as err:
        raise HTTPException(422, str(err)) from None


def encode(rgb, fmt: str) -> bytes:
    buffer = io.BytesIO()
    if fmt == "png":
        Image.fromarray(rgb).save(buffer, format="PNG", compress_level=3)  # ~2x faster than 6, ~10 % larger
    else:
        Image.fromarray(rgb).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _parameter(fields: dict, key: str, default, kind):
    """A form field overrides the query parameter of the same name."""
    if key not in fields:
        return default
    try:
        return kind(fields[key])
    except ValueError:
        raise HTTPException(422, f"{key}: {fields[key]!r} is not a valid {kind.__name__}") from None


def create_app(weights: list[str], max_upload_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = MAX_PIXELS,
               embedder_weights: str | None = None) -> FastAPI:
    """The app with one Colorizer per weights file (one or two, compared side by side on the page)."""
    colorizers = [Colorizer(w, embedder_weights=embedder_weights) for w in weights]
    busy = threading.BoundedSemaphore(MAX_CONCURRENT)
    app = FastAPI(title="Koalarization", summary="Colorize photos at their full resolution.",
                  docs_url="/docs", redoc_url=None)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page():
        # Everything the page uses is served from here: no CDN, no inline script.
        csp = "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'"
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": csp})

    @app.get("/api/health")
    def health() -> dict:
        return {
            "status": "ok",
            "models": [{"index": i, "name": c.weights.parent.name, "embedder": c.config.model.embedder,
                        "image_size": c.size} for i, c in enumerate(colorizers)],
            "max_upload_bytes": max_upload_bytes, "max_pixels": max_pixels, "formats": list(MEDIA_TYPES),
        }

    @app.post("/api/colorize", response_class=Response, openapi_extra=UPLOAD_DOC,
              responses={200: {"content": {t: {} for t in MEDIA_TYPES.values()},
                               "description": "the colorized photo, same size as the upload"},
                         413: {"description": "upload or pixel count over the limit"},
                         415: {"description": "not an image"}})
    async def colorize(request: Request,
                       saturation: float = Query(1.0, ge=0.0, le=4.0, description="0 gray, 1 as predicted"),
                       model: int = Query(0, ge=0, description="index of the model (see /api/health)"),
                       format: Literal["png", "jpeg"] = Query("png")):  # noqa: A002 - the API's name
        data, name, fields = await read_upload(request, max_upload_bytes)
        saturation = _parameter(fields, "saturation", saturation, float)
        model = _parameter(fields, "model", model, int)
        fmt = fields.get("format", format)
        if not 0.0 <= saturation <= 4.0:
            raise HTTPException(422, f"saturation: {saturation} is not between 0 and 4")
        if not 0 <= model < len(colorizers):
            raise HTTPException(422, f"model: {model} is not one of 0..{len(colorizers) - 1}")
        if fmt not in MEDIA_TYPES:
            raise HTTPException(422, f"format: {fmt!r} is not one of {', '.join(MEDIA_TYPES)}")

        def work() -> bytes:
            with busy:  # bounds memory: each photo in flight needs ~25 bytes per pixel
                rgb = decode(data, name, max_pixels)
                return encode(colorizers[model].colorize(rgb, saturation), fmt)

        body = await run_in_threadpool(work)
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(name).stem)[:80] or "photo"
        extension = "jpg" if fmt == "jpeg" else "png"
        return Response(body, media_type=MEDIA_TYPES[fmt],
                        headers={"Content-Disposition": f'inline; filename="{stem}-colorized.{extension}"'})

    return app


def serve(weights: list[str], host: str = "127.0.0.1", port: int = 8000, **app_options) -> None:
    """Run the app with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(create_app(weights, **app_options), host=host, port=port, log_level="info")
