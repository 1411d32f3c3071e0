"""Cleaning of citizen-supplied images before they are stored or shown.

Anonymity depends on this module: a photo taken with a phone usually carries the place it was
taken (EXIF GPS), the device (Make/Model, serial numbers), the time, and sometimes the owner's
name (XMP/IPTC author, PNG text chunks, JPEG comments, ICC profile descriptions). Telegram strips
compressed photos but not images sent as files, so every image goes through :func:`clean_image`.

The cleaner never copies metadata across: it decodes the first frame, applies the EXIF
orientation, converts the pixels to an ordinary mode (sRGB when an ICC profile is present) and
pastes them into a brand-new image whose ``info`` is empty, which is then encoded as JPEG (no
transparency) or PNG (transparency). Only pixel data survives.

The functions are synchronous and CPU-bound; the caller runs them in a worker thread. They import
nothing from the channel libraries.
"""

from __future__ import annotations

import hashlib
import io
import logging
import mimetypes
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, cast, get_args

from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

#: Telegram's Bot API refuses ``getFile`` above this size, so nothing larger can arrive anyway.
MAX_DOWNLOAD_BYTES: Final = 20 * 1024 * 1024
#: Largest image (width × height) that is decoded. 50 MP is above the default output of phone
#: cameras (their optional 108/200 MP modes are refused); a decoded RGBA frame this size is 200 MB.
MAX_IMAGE_PIXELS: Final = 50_000_000

RejectReason = Literal[
    "too_large", "not_an_image", "unsupported_image", "image_too_big_dimensions"
]
#: Every value :attr:`MediaRejected.reason` can take.
REJECT_REASONS: Final[frozenset[str]] = frozenset(get_args(RejectReason))

#: Pillow decoders that are tried on untrusted input. Everything else (EPS/PostScript, which runs
#: Ghostscript, and the many exotic scientific formats) is never parsed.
_DECODERS: Final = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF")

#: Leading bytes of image formats that are recognised but cannot be decoded here (HEIC/HEIF from
#: iPhones, JPEG XL, SVG, Photoshop, JPEG 2000). They are refused as ``unsupported_image``.
_KNOWN_UNSUPPORTED_PREFIXES: Final = (
    b"\xff\x0a",  # JPEG XL codestream
    b"\x00\x00\x00\x0cJXL \r\n\x87\n",  # JPEG XL container
    b"\x00\x00\x00\x0cjP  \r\n\x87\n",  # JPEG 2000 container
    b"\xff\x4f\xff\x51",  # JPEG 2000 codestream
    b"8BPS",  # Photoshop
    b"\x00\x00\x01\x00",  # Windows icon
)
_ISOBMFF_IMAGE_BRANDS: Final = frozenset(
    {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"avif", b"avis"}
)

#: File name endings treated as images even when the declared MIME type is generic. Camera raw
#: formats are listed because they carry full EXIF (including GPS): routing them to the cleaner
#: makes them refused rather than passed on untouched.
_IMAGE_EXTENSIONS: Final = frozenset(
    {
        ".jpg", ".jpeg", ".jpe", ".jfif", ".pjpeg", ".pjp", ".png", ".apng", ".gif", ".webp",
        ".bmp", ".dib", ".tif", ".tiff", ".heic", ".heif", ".hif", ".avif", ".jxl", ".jp2",
        ".j2k", ".jpf", ".jpx", ".ico", ".svg", ".svgz", ".psd", ".dng", ".cr2", ".cr3", ".nef",
        ".arw", ".orf", ".rw2", ".raf", ".srw", ".pef",
    }
)  # fmt: skip

_JPEG_QUALITY: Final = 88
_SRGB: Final = ImageCms.createProfile("sRGB")

_GREY_MODES: Final = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_ALPHA_MODES: Final = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


class MediaRejected(Exception):
    """The file cannot be accepted; :attr:`reason` says why (one of :data:`REJECT_REASONS`).

    The message is the reason code only, so logging the exception never reveals file contents.
    """

    reason: RejectReason

    def __init__(self, reason: RejectReason) -> None:
        if reason not in REJECT_REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}")
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class CleanImage:
    """A re-encoded image that carries pixel data only."""

    content: bytes
    mime: str
    width: int
    height: int
    sha256: str

    def __repr__(self) -> str:  # keep megabytes of bytes out of logs and tracebacks
        return (
            f"CleanImage(mime={self.mime!r}, width={self.width}, height={self.height}, "
            f"size={len(self.content)}, sha256={self.sha256[:12]}…)"
        )


def check_declared_size(size: int | None) -> None:
    """Refuse a file whose announced size is above :data:`MAX_DOWNLOAD_BYTES`.

    ``None`` (size unknown) passes; :func:`clean_image` checks the real length again.
    """
    if size is not None and size > MAX_DOWNLOAD_BYTES:
        raise MediaRejected("too_large")


def is_image_mime(mime: str | None, file_name: str | None = None) -> bool:
    """Whether a file must be treated as an image, i.e. go through :func:`clean_image`.

    Both hints come from the sender's client and are not trusted for anything else, so this errs
    towards "image": any ``image/*`` type counts, including ones that cannot be decoded here
    (HEIC, SVG, …), and so does an image file name under a generic or wrong MIME type. An image
    that is not decodable is then refused by :func:`clean_image` instead of being passed on with
    its metadata.
    """
    if mime:
        base = mime.split(";", 1)[0].strip().lower()
        if base.startswith("image/"):
            return True
    if file_name:
        dot = file_name.rfind(".")
        if dot != -1:
            ext = file_name[dot:].strip().lower()
            if ext in _IMAGE_EXTENSIONS:
                return True
            guessed, _ = mimetypes.guess_type(f"x{ext}", strict=False)
            if guessed is not None and guessed.startswith("image/"):
                return True
    return False


def clean_image(data: bytes) -> CleanImage:
    """Decode ``data`` and re-encode its pixels into a new file without any metadata.

    Raises :class:`MediaRejected` with ``too_large`` (over :data:`MAX_DOWNLOAD_BYTES`),
    ``not_an_image``, ``unsupported_image`` (an image format or variant that cannot be decoded,
    or a damaged file) or ``image_too_big_dimensions`` (over :data:`MAX_IMAGE_PIXELS`, checked
    from the header before any pixel is decoded).

    Animated images keep their first frame only.
    """
    if len(data) > MAX_DOWNLOAD_BYTES:
        raise MediaRejected("too_large")
    if not data:
        raise MediaRejected("not_an_image")
    try:
        with Image.open(io.BytesIO(data), formats=_DECODERS) as source:
            width, height = source.size
            if width <= 0 or height <= 0:
                raise MediaRejected("unsupported_image")
            if width * height > MAX_IMAGE_PIXELS:
                raise MediaRejected("image_too_big_dimensions")
            source.load()  # the first frame only; a damaged or truncated file fails here
            icc = source.info.get("icc_profile")
            _turn_upright(source)
            pixels = _to_plain_mode(source, icc if isinstance(icc, bytes) else None)
        # A brand-new image: its ``info`` is empty, so no metadata of the upload (EXIF, XMP,
        # comments, text chunks, ICC profile) can reach the encoder by default.
        with pixels:
            clean = Image.new(pixels.mode, pixels.size)
            clean.paste(pixels)
    except MediaRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own guard: an error above twice Image.MAX_IMAGE_PIXELS, or its warning when the
        # warning filters turn it into an error. Otherwise the explicit check above applies.
        raise MediaRejected("image_too_big_dimensions") from exc
    except UnidentifiedImageError as exc:
        reason: RejectReason = "unsupported_image" if _known_unsupported(data) else "not_an_image"
        raise MediaRejected(reason) from exc
    except Exception as exc:  # hostile or damaged input makes decoders fail in many ways
        raise MediaRejected("unsupported_image") from exc

    with clean:
        return _encode(clean)


def _turn_upright(image: Image.Image) -> None:
    """Turn the loaded frame, in place, as its EXIF orientation tag says."""
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except Exception:  # a damaged EXIF block must not cost the picture
        log.warning("image EXIF orientation unreadable; keeping the stored orientation")


def _to_plain_mode(image: Image.Image, icc: bytes | None) -> Image.Image:
    """A new image in ``RGB``/``L`` (opaque) or ``RGBA``/``LA`` (transparent).

    Colours are converted to sRGB first when an ICC profile is attached, because the profile
    itself is dropped.
    """
    mode = image.mode
    has_alpha = mode in _ALPHA_MODES or "transparency" in image.info
    grey = mode in _GREY_MODES or (mode == "P" and _palette_is_grey(image))

    converted: Image.Image
    if mode.startswith("I;16") or mode in ("I", "F"):
        converted = _scale_to_8_bit(image)
    elif grey:
        converted = image.convert("LA" if has_alpha else "L")
    elif mode == "CMYK":
        converted = _icc_to_srgb(image, icc, "RGB") or image.convert("RGB")
    else:
        plain = image.convert("RGBA" if has_alpha else "RGB")
        converted = _icc_to_srgb(plain, icc, plain.mode) or plain
        if converted is not plain:
            plain.close()

    if converted.mode in ("RGBA", "LA") and _alpha_is_opaque(converted):
        opaque = converted.convert(converted.mode[:-1])
        converted.close()
        converted = opaque
    return converted


def _icc_to_srgb(image: Image.Image, icc: bytes | None, target: str) -> Image.Image | None:
    """``image`` converted from its embedded profile to sRGB, or ``None`` if not possible."""
    if not icc:
        return None
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        return ImageCms.profileToProfile(image, profile, _SRGB, outputMode=target)
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        log.info("image ICC profile unusable; converting colours without it")
        return None


def _scale_to_8_bit(image: Image.Image) -> Image.Image:
    """Deep greyscale (16-bit, 32-bit integer, float) to ``L`` without clipping to white."""
    if image.mode.startswith("I;16"):
        low, high = 0.0, 65535.0
        image = image.convert("I")
    else:
        single_band = cast("tuple[float, float]", image.getextrema())
        lo, hi = float(single_band[0]), float(single_band[1])
        if image.mode == "F" and lo >= 0 and hi <= 1:
            low, high = 0.0, 1.0
        elif lo >= 0 and hi <= 255:
            low, high = 0.0, 255.0
        else:
            low, high = lo, hi
    span = high - low or 1.0
    scaled = image.point(lambda v: (v - low) * (255.0 / span))
    return scaled.convert("L")


def _palette_is_grey(image: Image.Image) -> bool:
    palette = image.getpalette("RGB")
    if not palette:
        return False
    return all(
        palette[i] == palette[i + 1] == palette[i + 2] for i in range(0, len(palette) - 2, 3)
    )


def _alpha_is_opaque(image: Image.Image) -> bool:
    return image.getchannel("A").getextrema() == (255, 255)


def _known_unsupported(data: bytes) -> bool:
    head = data[:64]
    if head.startswith(_KNOWN_UNSUPPORTED_PREFIXES):
        return True
    if head[4:8] == b"ftyp" and head[8:12] in _ISOBMFF_IMAGE_BRANDS:
        return True
    text = head.lstrip().lower()
    return text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in data[:4096])


def _encode(image: Image.Image) -> CleanImage:
    buffer = io.BytesIO()
    if image.mode in ("RGBA", "LA"):
        image.save(buffer, format="PNG", optimize=False, compress_level=6)
        mime = "image/png"
    else:
        image.save(buffer, format="JPEG", quality=_JPEG_QUALITY, optimize=True)
        mime = "image/jpeg"
    content = buffer.getvalue()
    return CleanImage(
        content=content,
        mime=mime,
        width=image.width,
        height=image.height,
        sha256=hashlib.sha256(content).hexdigest(),
    )


# ------------------------------------------------------------------------ any evidence file

#: What the cleaner produces when it could clean: an officer's card says of any other file that
#: it was not cleaned.
OGG_OPUS: Final = "audio/ogg; codecs=opus"
OGG_VORBIS: Final = "audio/ogg; codecs=vorbis"
CLEANED_MIMES: Final = frozenset(
    {"image/jpeg", "image/png", "application/pdf", "video/mp4", OGG_OPUS, OGG_VORBIS}
)
#: The type given to a file that could not be recognised or cleaned: passed on as it is.
UNCLEANED_MIME: Final = "application/octet-stream"
#: An Ogg file that could not be cleaned (another codec, several streams, damaged): it keeps a
#: plain Ogg type, so that officers can still play it, and the card says it was not cleaned.
#: Voice notes stored before Ogg was cleaned have this type too.
UNCLEANED_OGG: Final = "audio/ogg"
_EXTENSIONS: Final = {
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "application/pdf": ".pdf",
    "video/mp4": ".mp4",
    "audio/ogg": ".ogg",
}
#: The header packet that opens each Ogg codec cleaned here, the start of its comment header
#: packet, and that comment header with nothing in it (no vendor string, no comments).
_OGG_CODECS: Final = {
    b"OpusHead": (OGG_OPUS, b"OpusTags", b"OpusTags" + bytes(8)),
    b"\x01vorbis": (OGG_VORBIS, b"\x03vorbis", b"\x03vorbis" + bytes(8) + b"\x01"),
}

#: ISO base media boxes walked into, and boxes that hold metadata (location, device, author,
#: XMP) and are overwritten in place as ``free`` padding of the same size, so that no offset in
#: the file changes.
_BMFF_CONTAINERS: Final = frozenset({b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts"})
_BMFF_METADATA: Final = frozenset({b"udta", b"meta", b"uuid", b"XMP_", b"\xa9xyz"})
_BMFF_TIMED_HEADERS: Final = frozenset({b"mvhd", b"tkhd", b"mdhd"})


@dataclass(frozen=True)
class CleanFile:
    """A piece of evidence as it is stored and re-sent: images re-encoded, PDFs and MP4/MOV
    videos stripped of their metadata; anything else unchanged with ``cleaned`` false."""

    content: bytes
    mime: str
    sha256: str
    cleaned: bool

    def __repr__(self) -> str:
        return f"CleanFile(mime={self.mime!r}, size={len(self.content)}, cleaned={self.cleaned})"


def is_cleaned(mime: str | None) -> bool:
    """Whether a stored file of type ``mime`` went through a cleaner."""
    return mime in CLEANED_MIMES


def neutral_name(position: int, mime: str | None) -> str:
    """The name a file is re-sent under (``evidence-1.jpg``): never the sender's own name."""
    base = (mime or "").split(";", 1)[0].strip()
    return f"evidence-{position + 1}{_EXTENSIONS.get(base, '.bin')}"


def looks_like_image(data: bytes) -> bool:
    """Whether ``data`` is an image, judged by its content only (never a declared type)."""
    if _known_unsupported(data):
        return True
    try:
        with Image.open(io.BytesIO(data), formats=_DECODERS):
            return True
    except Exception:  # not an image, or one no decoder here accepts
        return False


def clean_evidence(data: bytes) -> CleanImage | CleanFile:
    """Recognise ``data`` by its content and clean it.

    Images are re-encoded by :func:`clean_image` (a :class:`CleanImage`, or refused with
    :class:`MediaRejected` when they cannot be); PDFs lose their document information and XMP
    metadata; MP4/MOV videos lose their ``udta``/``meta``/XMP boxes (GPS ``©xyz``, device,
    author) and creation times; Ogg Opus and Ogg Vorbis voice notes lose their comment header
    (OpusTags / Vorbis comments: title, artist, device, encoder, any tag at all). Any other
    file, or one that fails to clean, is kept unchanged with ``cleaned`` false (an Ogg file
    keeps the type :data:`UNCLEANED_OGG`, so that officers can still play it).
    """
    if len(data) > MAX_DOWNLOAD_BYTES:
        raise MediaRejected("too_large")
    if looks_like_image(data):
        return clean_image(data)
    cleaner: Callable[[bytes], tuple[bytes, str]] | None = None
    if b"%PDF-" in data[:1024]:
        cleaner = _clean_pdf
    elif data[4:8] == b"ftyp":
        cleaner = _clean_bmff
    elif data[:4] == b"OggS":
        cleaner = _clean_ogg
    if cleaner is not None:
        try:
            content, mime = cleaner(data)
        except Exception:  # a damaged or hostile file: passed on, marked as not cleaned
            log.warning("evidence file could not be cleaned; passed on marked as not cleaned")
        else:
            return CleanFile(content, mime, hashlib.sha256(content).hexdigest(), cleaned=True)
    if data[:4] == b"OggS":  # an Ogg file that could not be cleaned: it still plays
        return CleanFile(data, UNCLEANED_OGG, hashlib.sha256(data).hexdigest(), cleaned=False)
    return CleanFile(data, UNCLEANED_MIME, hashlib.sha256(data).hexdigest(), cleaned=False)


def _clean_pdf(data: bytes) -> tuple[bytes, str]:
    """The PDF without its document information, XMP streams and application private data."""
    import pikepdf  # imported on first use: a start-up that never sees a PDF does not pay

    with pikepdf.open(io.BytesIO(data)) as pdf:
        if "/Info" in pdf.trailer:
            del pdf.trailer["/Info"]
        for obj in pdf.objects:
            if isinstance(obj, pikepdf.Dictionary | pikepdf.Stream):
                for key in ("/Metadata", "/PieceInfo"):
                    if key in obj:
                        del obj[key]
        out = io.BytesIO()
        pdf.save(out, fix_metadata_version=False, static_id=True)
        return out.getvalue(), "application/pdf"


def _clean_bmff(data: bytes) -> tuple[bytes, str]:
    """An MP4/MOV with its metadata boxes blanked out as ``free`` space of the same size."""
    if data[8:12] in _ISOBMFF_IMAGE_BRANDS:
        raise ValueError("an ISO image file, not a video")
    buffer = bytearray(data)
    _blank_boxes(buffer, 0, len(buffer))
    return bytes(buffer), "video/mp4"


def _blank_boxes(buffer: bytearray, start: int, end: int) -> None:
    position = start
    while position < end:
        if end - position < 8:
            raise ValueError("truncated box header")
        size = int.from_bytes(buffer[position : position + 4], "big")
        kind = bytes(buffer[position + 4 : position + 8])
        header = 8
        if size == 1:
            size = int.from_bytes(buffer[position + 8 : position + 16], "big")
            header = 16
        elif size == 0:
            size = end - position
        if size < header or position + size > end:
            raise ValueError("malformed box size")
        body = position + header
        if kind in _BMFF_METADATA:
            buffer[position + 4 : position + 8] = b"free"
            buffer[body : position + size] = bytes(position + size - body)
        elif kind in _BMFF_CONTAINERS:
            _blank_boxes(buffer, body, position + size)
        elif kind in _BMFF_TIMED_HEADERS and position + size - body >= 20:
            # creation and modification times: 4-byte (version 0) or 8-byte (version 1) fields
            width = 8 if buffer[body] == 1 else 4
            buffer[body + 4 : body + 4 + 2 * width] = bytes(2 * width)
        position += size


def _clean_ogg(data: bytes) -> tuple[bytes, str]:
    """An Ogg Opus or Ogg Vorbis file with an empty comment header; the audio untouched.

    Only one logical stream, read page by page to the last byte, is accepted: a chained or
    multiplexed file, another codec (Speex, FLAC, Theora), bytes after the last page or a
    damaged page raise, and the file is then passed on marked as not cleaned. The comment
    header (the stream's second packet) is replaced by one with no vendor string and no
    comment, and its pages are written anew (sequence numbers and checksums); every audio
    page is kept as it was. The result is read back to check.
    """
    from mutagen.ogg import OggPage  # imported on first use, like pikepdf

    pages = _ogg_pages(data)
    head = pages[0].packets[0]
    codec = next((spec for magic, spec in _OGG_CODECS.items() if head.startswith(magic)), None)
    if codec is None:
        raise ValueError("not Ogg Opus nor Ogg Vorbis")
    mime, comment_magic, empty = codec
    # Both codecs put the identification header alone on the first page and start the comment
    # header on the second; the comment header's pages end where the next packet begins.
    if len(pages[0].packets) != 1 or not pages[0].complete or len(pages) < 2:
        raise ValueError("unexpected Ogg header pages")
    old = [pages[1]]
    while not (old[-1].complete or len(old[-1].packets) > 1):
        if len(old) + 1 >= len(pages):
            raise ValueError("truncated Ogg comment header")
        old.append(pages[len(old) + 1])
    packets = OggPage.to_packets(old, strict=False)
    if not packets[0].startswith(comment_magic):
        raise ValueError("no Ogg comment header where it belongs")
    packets[0] = empty
    fresh = OggPage.from_packets(packets, old[0].sequence)
    stream = io.BytesIO(data)
    OggPage.replace(stream, old, fresh)
    cleaned = stream.getvalue()
    check = _ogg_pages(cleaned)
    if OggPage.to_packets(check[1:2], strict=False)[0] != empty:
        raise ValueError("the Ogg comment header did not come out empty")
    return cleaned, mime


def _ogg_pages(data: bytes) -> list[Any]:
    """Every page of a one-stream Ogg file, to its last byte; ``ValueError`` otherwise."""
    from mutagen.ogg import OggPage

    stream = io.BytesIO(data)
    pages = []
    while stream.tell() < len(data):
        try:
            pages.append(OggPage(stream))
        except Exception as exc:  # mutagen's own error types, EOFError, struct errors
            raise ValueError("not a well-formed Ogg page") from exc
    if not pages or not pages[0].first or len({page.serial for page in pages}) != 1:
        raise ValueError("not one Ogg stream")
    if sum(page.size for page in pages) != len(data):
        raise ValueError("bytes outside the Ogg pages")
    return pages
