"""Image cleaning: nothing of an upload but its pixels may survive (handlers/media.py)."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import pytest
from PIL import Image, ImageCms, ImageFile, PngImagePlugin

from handlers import media
from handlers.media import (
    MAX_DOWNLOAD_BYTES,
    MAX_IMAGE_PIXELS,
    REJECT_REASONS,
    CleanImage,
    MediaRejected,
    check_declared_size,
    clean_image,
    is_image_mime,
)

MAKE = "SecretCam Corporation"
MODEL = "SpyPhone 9000"
TAKEN = "2024:05:06 07:08:09"
COMMENT = b"shot by Nguyen Van A, 0912345678"
XMP = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
    b'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
    b'xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:creator>Tran Thi B</dc:creator>'
    b"</rdf:Description></rdf:RDF></x:xmpmeta>"
)
IPTC_MARKER = b"IPTC-BYLINE-Le Van C"
ICC_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()

# Things that must never appear in a cleaned file.
FORBIDDEN = (
    b"Exif",
    b"GPS",
    MAKE.encode(),
    MODEL.encode(),
    TAKEN.encode(),
    COMMENT,
    b"Nguyen",
    b"Tran Thi B",
    b"xmpmeta",
    b"http://ns.adobe.com/xap",
    b"Photoshop 3.0",
    IPTC_MARKER,
    b"ICC_PROFILE",
    b"lcms",
)
FORBIDDEN_INFO = ("exif", "comment", "xmp", "XML:com.adobe.xmp", "icc_profile", "photoshop", "dpi")


def _exif(orientation: int | None = None) -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = MAKE  # Make
    exif[0x0110] = MODEL  # Model
    if orientation is not None:
        exif[0x0112] = orientation  # Orientation
    exif.get_ifd(0x8769)[0x9003] = TAKEN  # Exif IFD: DateTimeOriginal
    gps = exif.get_ifd(0x8825)  # GPS IFD
    gps[0x01] = "N"  # GPSLatitudeRef
    gps[0x02] = (21.0, 1.0, 30.5)  # GPSLatitude (Hà Nội)
    gps[0x03] = "E"  # GPSLongitudeRef
    gps[0x04] = (105.0, 50.0, 12.25)  # GPSLongitude
    gps[0x12] = "GPS-WGS-84"  # GPSMapDatum
    return exif


def _with_app13(jpeg: bytes) -> bytes:
    """Insert a Photoshop/IPTC APP13 segment right after the SOI marker."""
    payload = b"Photoshop 3.0\x008BIM\x04\x04\x00\x00" + struct.pack(">I", 24) + IPTC_MARKER
    payload += b"\x00" * (24 - len(IPTC_MARKER))
    segment = b"\xff\xed" + struct.pack(">H", len(payload) + 2) + payload
    assert jpeg[:2] == b"\xff\xd8"
    return jpeg[:2] + segment + jpeg[2:]


def _quadrants(size: tuple[int, int]) -> Image.Image:
    """Red top-left, green top-right, blue bottom-left, white bottom-right."""
    width, height = size
    image = Image.new("RGB", size, "white")
    image.paste((255, 0, 0), (0, 0, width // 2, height // 2))
    image.paste((0, 255, 0), (width // 2, 0, width, height // 2))
    image.paste((0, 0, 255), (0, height // 2, width // 2, height))
    return image


def _tagged_jpeg(orientation: int | None = None, size: tuple[int, int] = (64, 32)) -> bytes:
    buffer = io.BytesIO()
    _quadrants(size).save(
        buffer,
        "JPEG",
        quality=95,
        exif=_exif(orientation),
        comment=COMMENT,
        xmp=XMP,
        icc_profile=ICC_SRGB,
    )
    return _with_app13(buffer.getvalue())


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def _png_header_only(width: int, height: int) -> bytes:
    """A few hundred bytes that declare a huge RGB PNG (the pixel data is mostly missing)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _assert_no_metadata(result: CleanImage) -> Image.Image:
    for needle in FORBIDDEN:
        assert needle not in result.content, needle
    image = Image.open(io.BytesIO(result.content))
    assert len(image.getexif()) == 0
    for key in FORBIDDEN_INFO:
        assert key not in image.info, key
    assert image.size == (result.width, result.height)
    assert image.format == {"image/jpeg": "JPEG", "image/png": "PNG"}[result.mime]
    return image


def _pixel(image: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    value = image.getpixel(xy)
    assert isinstance(value, tuple)
    return value


def _grey(image: Image.Image, xy: tuple[int, int]) -> int:
    value = image.getpixel(xy)
    assert isinstance(value, int)
    return value


def _near(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 40) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any pixel data is decoded."""

    def refuse(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


# --- the input really carries what must be removed ------------------------------------------


def test_fixture_jpeg_carries_all_the_metadata() -> None:
    data = _tagged_jpeg(orientation=1)
    image = Image.open(io.BytesIO(data))
    exif = image.getexif()
    assert exif[0x010F] == MAKE
    assert exif.get_ifd(0x8825)[0x02] == (21.0, 1.0, 30.5)
    assert exif.get_ifd(0x8769)[0x9003] == TAKEN
    assert image.info["comment"] == COMMENT
    assert "xmp" in image.info
    assert image.info["icc_profile"] == ICC_SRGB
    assert b"Exif" in data
    assert b"GPS" in data
    assert IPTC_MARKER in data


# --- JPEG ----------------------------------------------------------------------------------


def test_jpeg_with_gps_exif_comment_xmp_iptc_icc_comes_out_bare() -> None:
    result = clean_image(_tagged_jpeg())

    image = _assert_no_metadata(result)
    assert result.mime == "image/jpeg"
    assert (result.width, result.height) == (64, 32)
    assert image.mode == "RGB"
    assert _near(_pixel(image, (8, 8)), (255, 0, 0))
    assert _near(_pixel(image, (56, 24)), (255, 255, 255))


def test_result_fields_describe_the_content() -> None:
    import hashlib

    result = clean_image(_tagged_jpeg())
    assert result.content[:3] == b"\xff\xd8\xff"
    assert result.sha256 == hashlib.sha256(result.content).hexdigest()
    assert "content" not in repr(result)  # no bytes in logs


def test_cleaning_is_deterministic() -> None:
    data = _tagged_jpeg()
    assert clean_image(data).sha256 == clean_image(data).sha256


@pytest.mark.parametrize(
    ("orientation", "size", "red_at"),
    [
        (1, (64, 32), (8, 8)),  # as stored
        (3, (64, 32), (56, 24)),  # upside down: red moves to the bottom right
        (6, (32, 64), (24, 8)),  # rotate 90° clockwise: red moves to the top right
        (8, (32, 64), (8, 56)),  # rotate 90° counter-clockwise: red moves to the bottom left
    ],
)
def test_exif_orientation_is_applied(
    orientation: int, size: tuple[int, int], red_at: tuple[int, int]
) -> None:
    result = clean_image(_tagged_jpeg(orientation=orientation))

    image = _assert_no_metadata(result)
    assert (result.width, result.height) == size
    assert _near(_pixel(image, red_at), (255, 0, 0))


def test_orientation_6_swaps_width_and_height() -> None:
    result = clean_image(_tagged_jpeg(orientation=6, size=(80, 40)))
    assert (result.width, result.height) == (40, 80)


def test_cmyk_jpeg_becomes_rgb() -> None:
    buffer = io.BytesIO()
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(buffer, "JPEG", exif=_exif())

    result = clean_image(buffer.getvalue())

    image = _assert_no_metadata(result)
    assert result.mime == "image/jpeg"
    assert image.mode == "RGB"
    assert _near(_pixel(image, (8, 8)), (255, 0, 0))


def test_embedded_colour_profile_is_applied_then_dropped() -> None:
    # An sRGB profile changes nothing visible but must not be carried over.
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 120, 200)).save(
        buffer, "PNG", icc_profile=ICC_SRGB, exif=_exif()
    )

    result = clean_image(buffer.getvalue())

    image = _assert_no_metadata(result)
    assert _near(_pixel(image, (8, 8)), (10, 120, 200), tolerance=8)
    assert b"iCCP" not in result.content


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")
def test_damaged_exif_does_not_lose_the_picture() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 8), "red").save(buffer, "JPEG", exif=b"Exif\x00\x00MM\x00*garbage")

    result = clean_image(buffer.getvalue())

    _assert_no_metadata(result)
    assert (result.width, result.height) == (16, 8)


def test_unreadable_orientation_keeps_the_picture(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise SyntaxError("bad EXIF")

    monkeypatch.setattr(media.ImageOps, "exif_transpose", broken)

    result = clean_image(_tagged_jpeg(orientation=6))

    _assert_no_metadata(result)
    assert (result.width, result.height) == (64, 32)  # as stored, but still clean


# --- PNG, transparency and other modes -------------------------------------------------------


def test_png_with_text_chunks_and_alpha_stays_png_without_text() -> None:
    source = Image.new("RGBA", (20, 10), (0, 0, 0, 0))
    source.paste((200, 30, 40, 255), (0, 0, 10, 10))
    source.paste((0, 90, 200, 128), (10, 0, 20, 10))
    text = PngImagePlugin.PngInfo()
    text.add_text("Author", "Nguyen Van A")
    text.add_text("Comment", "GPS 21.0285 105.8542", zip=True)
    text.add_itxt("XML:com.adobe.xmp", XMP.decode())
    buffer = io.BytesIO()
    source.save(buffer, "PNG", pnginfo=text, exif=_exif(), icc_profile=ICC_SRGB)
    data = buffer.getvalue()
    assert b"tEXt" in data
    assert b"zTXt" in data

    result = clean_image(data)

    image = _assert_no_metadata(result)
    assert result.mime == "image/png"
    assert image.mode == "RGBA"
    for chunk in (b"tEXt", b"zTXt", b"iTXt", b"eXIf", b"iCCP", b"tIME"):
        assert chunk not in result.content, chunk
    assert not getattr(image, "text", {})
    assert image.tobytes() == source.tobytes()  # lossless, alpha included


def test_opaque_rgba_png_becomes_jpeg() -> None:
    buffer = io.BytesIO()
    Image.new("RGBA", (16, 16), (10, 200, 10, 255)).save(buffer, "PNG")

    result = clean_image(buffer.getvalue())

    assert result.mime == "image/jpeg"
    _assert_no_metadata(result)


def test_palette_gif_with_transparency_and_comment_becomes_rgba_png() -> None:
    source = Image.new("P", (12, 12), 0)
    source.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    source.paste(1, (0, 0, 6, 12))
    buffer = io.BytesIO()
    source.save(buffer, "GIF", transparency=0, comment=COMMENT)
    assert COMMENT in buffer.getvalue()

    result = clean_image(buffer.getvalue())

    image = _assert_no_metadata(result)
    assert result.mime == "image/png"
    assert image.mode == "RGBA"
    assert image.getpixel((2, 2)) == (255, 0, 0, 255)
    assert _pixel(image, (10, 10))[3] == 0


def test_animated_gif_keeps_the_first_frame() -> None:
    frames = [Image.new("RGB", (10, 10), colour) for colour in ("red", "lime", "blue")]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)

    result = clean_image(buffer.getvalue())

    image = _assert_no_metadata(result)
    assert result.mime == "image/jpeg"
    assert getattr(image, "n_frames", 1) == 1
    assert _near(_pixel(image, (5, 5)), (255, 0, 0))


def test_animated_webp_keeps_the_first_frame() -> None:
    frames = [Image.new("RGB", (10, 10), colour) for colour in ("blue", "red")]
    buffer = io.BytesIO()
    frames[0].save(
        buffer, "WEBP", save_all=True, append_images=frames[1:], exif=_exif(), lossless=True
    )

    result = clean_image(buffer.getvalue())

    image = _assert_no_metadata(result)
    assert _near(_pixel(image, (5, 5)), (0, 0, 255))


def test_greyscale_with_alpha_stays_greyscale_png() -> None:
    buffer = io.BytesIO()
    Image.new("LA", (8, 8), (100, 50)).save(buffer, "PNG")

    result = clean_image(buffer.getvalue())

    image = _assert_no_metadata(result)
    assert result.mime == "image/png"
    assert image.mode == "LA"
    assert image.getpixel((4, 4)) == (100, 50)


def test_sixteen_bit_greyscale_is_scaled_not_clipped() -> None:
    buffer = io.BytesIO()
    Image.new("I;16", (8, 8), 32896).save(buffer, "PNG")  # mid grey at 16 bits

    result = clean_image(buffer.getvalue())

    image = _assert_no_metadata(result)
    assert image.mode == "L"
    assert abs(_grey(image, (4, 4)) - 128) <= 3


def test_bilevel_tiff_with_description_is_cleaned() -> None:
    buffer = io.BytesIO()
    Image.new("1", (8, 8), 1).save(buffer, "TIFF", tiffinfo={270: "Nguyen Van A", 271: MAKE})

    result = clean_image(buffer.getvalue())

    image = _assert_no_metadata(result)
    assert image.mode == "L"


# --- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello, this is a text file",
        b"%PDF-1.7\n1 0 obj << >> endobj\n",
        b"\x00" * 1024,
        b"PK\x03\x04" + b"\x00" * 100,  # zip
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n",  # never handed to Ghostscript
    ],
)
def test_not_an_image(data: bytes) -> None:
    with pytest.raises(MediaRejected) as caught:
        clean_image(data)
    assert caught.value.reason == "not_an_image"


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64,  # iPhone HEIC
        b"\xff\x0a" + b"\x00" * 64,  # JPEG XL
        b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"></svg>',
        b"8BPS\x00\x01" + b"\x00" * 64,  # Photoshop
    ],
)
def test_recognised_but_undecodable_formats_are_unsupported(data: bytes) -> None:
    with pytest.raises(MediaRejected) as caught:
        clean_image(data)
    assert caught.value.reason == "unsupported_image"


def test_truncated_jpeg_is_refused() -> None:
    data = _tagged_jpeg(size=(256, 256))
    with pytest.raises(MediaRejected) as caught:
        clean_image(data[: len(data) // 2])
    assert caught.value.reason == "unsupported_image"


def test_oversized_bytes_are_refused_before_decoding(no_decoding: None) -> None:
    with pytest.raises(MediaRejected) as caught:
        clean_image(b"\xff\xd8\xff" + bytes(MAX_DOWNLOAD_BYTES))
    assert caught.value.reason == "too_large"


def test_declared_size() -> None:
    check_declared_size(None)
    check_declared_size(0)
    check_declared_size(MAX_DOWNLOAD_BYTES)
    with pytest.raises(MediaRejected) as caught:
        check_declared_size(MAX_DOWNLOAD_BYTES + 1)
    assert caught.value.reason == "too_large"
    assert MAX_DOWNLOAD_BYTES == 20 * 1024 * 1024


def test_decompression_bomb_header_is_refused_without_decoding(no_decoding: None) -> None:
    data = _png_header_only(20_000, 20_000)  # 400 MP; Pillow itself raises here
    assert len(data) < 200

    with pytest.raises(MediaRejected) as caught:
        clean_image(data)
    assert caught.value.reason == "image_too_big_dimensions"


def test_dimensions_above_our_limit_but_below_pillows_are_refused(no_decoding: None) -> None:
    side = 8_000  # 64 MP: above MAX_IMAGE_PIXELS, below Pillow's own warning threshold
    assert MAX_IMAGE_PIXELS < side * side < (Image.MAX_IMAGE_PIXELS or 0)

    with pytest.raises(MediaRejected) as caught:
        clean_image(_png_header_only(side, side))
    assert caught.value.reason == "image_too_big_dimensions"


def test_pillow_bomb_warning_is_refused_whether_or_not_it_is_an_error(no_decoding: None) -> None:
    data = _png_header_only(10_000, 10_000)  # 100 MP: Pillow warns, does not raise
    for action in ("error", "ignore"):
        with warnings.catch_warnings():
            warnings.simplefilter(action, Image.DecompressionBombWarning)
            with pytest.raises(MediaRejected) as caught:
                clean_image(data)
        assert caught.value.reason == "image_too_big_dimensions"


def test_jpeg_declaring_huge_dimensions_is_refused(no_decoding: None) -> None:
    data = bytearray(_tagged_jpeg())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 60_000, 60_000)  # height, width

    with pytest.raises(MediaRejected) as caught:
        clean_image(bytes(data))
    assert caught.value.reason == "image_too_big_dimensions"


def test_media_rejected_reasons() -> None:
    assert {"too_large", "not_an_image", "unsupported_image", "image_too_big_dimensions"} == set(
        REJECT_REASONS
    )
    error = MediaRejected("too_large")
    assert error.reason == "too_large"
    assert str(error) == "too_large"
    with pytest.raises(ValueError, match="unknown"):
        MediaRejected("nope")  # type: ignore[arg-type]


# --- MIME / file-name routing ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("mime", "file_name", "expected"),
    [
        ("image/jpeg", None, True),
        ("IMAGE/PNG; charset=binary", None, True),
        ("image/jpg", None, True),
        ("image/heic", "IMG_0001.HEIC", True),  # not decodable, but must go through the cleaner
        ("image/svg+xml", None, True),
        ("application/octet-stream", "IMG_0001.JPG", True),
        (None, "scan.tiff", True),
        ("application/pdf", "photo.jpg", True),  # either hint is enough
        (None, "DSC_0001.NEF", True),  # camera raw: full EXIF, refused rather than passed on
        ("video/mp4", "clip.mp4", False),
        ("application/pdf", "report.pdf", False),
        ("application/octet-stream", None, False),
        (None, None, False),
        ("", "", False),
        (None, "no_extension", False),
        ("text/plain", "notes.txt", False),
    ],
)
def test_is_image_mime(mime: str | None, file_name: str | None, expected: bool) -> None:
    assert is_image_mime(mime, file_name) is expected


def test_module_stays_channel_agnostic() -> None:
    source = Path(media.__file__).read_text(encoding="utf-8")
    assert "import telegram" not in source
    assert "from telegram" not in source
