"""Real result files for the fake providers, made here: a playable MP4 and a PNG cover.

The video is H.264 (Baseline profile) in an MP4 container, every frame an IDR picture
whose macroblocks are I_PCM, that is raw samples: no transform, no entropy coding, and so
an encoder of a few dozen lines that any player decodes. A size can be asked for: the
file then ends with a ``free`` box of padding, which players skip. Files are served whole
or throttled to a byte rate (a "slow download", to catch a download midway).
"""

from __future__ import annotations

import asyncio
import struct
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import cache

from starlette.responses import Response, StreamingResponse

WIDTH = HEIGHT = 64
FPS = 10
FRAMES = 20
TIMESCALE = 1000
_CHUNK = 64 * 1024


@dataclass
class FileSettings:
    """How a fake provider serves its result files. Mutable on purpose: tests change it."""

    video_bytes: int | None = None  # padded up to this size; None: the bare video
    rate: float | None = None  # bytes per second; None: as fast as the loop can send


# -- H.264 --------------------------------------------------------------------------------


class _Bits:
    def __init__(self) -> None:
        self.bits: list[int] = []

    def u(self, value: int, width: int) -> None:
        self.bits.extend((value >> (width - 1 - i)) & 1 for i in range(width))

    def ue(self, value: int) -> None:
        code = value + 1
        self.u(0, code.bit_length() - 1)
        self.u(code, code.bit_length())

    def se(self, value: int) -> None:
        self.ue(2 * value - 1 if value > 0 else -2 * value)

    def align(self) -> None:
        while len(self.bits) % 8:
            self.bits.append(0)

    def trailing(self) -> bytes:
        self.bits.append(1)
        self.align()
        return self.bytes()

    def bytes(self) -> bytes:
        assert len(self.bits) % 8 == 0
        return bytes(
            int("".join(map(str, self.bits[i : i + 8])), 2) for i in range(0, len(self.bits), 8)
        )


def _nal(header: int, payload: bytes) -> bytes:
    """A NAL unit: its header byte, then the payload with emulation prevention bytes."""
    out = bytearray([header])
    zeros = 0
    for byte in payload:
        if zeros >= 2 and byte <= 3:
            out.append(3)
            zeros = 0
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


def _sps() -> bytes:
    bits = _Bits()
    bits.u(66, 8)  # profile_idc: Baseline
    bits.u(0b11000000, 8)  # constraint_set0 and set1: Constrained Baseline
    bits.u(30, 8)  # level_idc 3.0
    bits.ue(0)  # seq_parameter_set_id
    bits.ue(0)  # log2_max_frame_num_minus4
    bits.ue(2)  # pic_order_cnt_type: output order is decoding order
    bits.ue(1)  # max_num_ref_frames
    bits.u(0, 1)  # gaps_in_frame_num_value_allowed_flag
    bits.ue(WIDTH // 16 - 1)
    bits.ue(HEIGHT // 16 - 1)
    bits.u(1, 1)  # frame_mbs_only_flag
    bits.u(1, 1)  # direct_8x8_inference_flag
    bits.u(0, 1)  # frame_cropping_flag
    bits.u(0, 1)  # vui_parameters_present_flag
    return _nal(0x67, bits.trailing())


def _pps() -> bytes:
    bits = _Bits()
    bits.ue(0)  # pic_parameter_set_id
    bits.ue(0)  # seq_parameter_set_id
    bits.u(0, 1)  # entropy_coding_mode_flag: CAVLC
    bits.u(0, 1)  # bottom_field_pic_order_in_frame_present_flag
    bits.ue(0)  # num_slice_groups_minus1
    bits.ue(0)  # num_ref_idx_l0_default_active_minus1
    bits.ue(0)  # num_ref_idx_l1_default_active_minus1
    bits.u(0, 1)  # weighted_pred_flag
    bits.u(0, 2)  # weighted_bipred_idc
    bits.se(0)  # pic_init_qp_minus26
    bits.se(0)  # pic_init_qs_minus26
    bits.se(0)  # chroma_qp_index_offset
    bits.u(1, 1)  # deblocking_filter_control_present_flag
    bits.u(0, 1)  # constrained_intra_pred_flag
    bits.u(0, 1)  # redundant_pic_cnt_present_flag
    return _nal(0x68, bits.trailing())


def _samples(frame: int) -> tuple[list[list[int]], list[list[int]], list[list[int]]]:
    """A frame's planes: a diagonal gradient sliding to the right, on a slowly turning hue."""
    luma = [
        [16 + ((x + y + frame * 4) * 219 // (WIDTH + HEIGHT)) % 220 for x in range(WIDTH)]
        for y in range(HEIGHT)
    ]
    cb = [[128 + (frame * 6 + x) % 64 - 32 for x in range(WIDTH // 2)] for _ in range(HEIGHT // 2)]
    cr = [[128 - (frame * 4 + y) % 64 + 32 for _ in range(WIDTH // 2)] for y in range(HEIGHT // 2)]
    return luma, cb, cr


def _idr(frame: int) -> bytes:
    bits = _Bits()
    bits.ue(0)  # first_mb_in_slice
    bits.ue(7)  # slice_type: I, as every slice of the picture
    bits.ue(0)  # pic_parameter_set_id
    bits.u(0, 4)  # frame_num (log2_max_frame_num = 4)
    bits.ue(frame % 2)  # idr_pic_id: differs between consecutive IDR pictures
    bits.u(0, 1)  # no_output_of_prior_pics_flag
    bits.u(0, 1)  # long_term_reference_flag
    bits.se(0)  # slice_qp_delta
    bits.ue(1)  # disable_deblocking_filter_idc: off
    luma, cb, cr = _samples(frame)
    for mb_y in range(HEIGHT // 16):
        for mb_x in range(WIDTH // 16):
            bits.ue(25)  # mb_type: I_PCM
            bits.align()  # pcm_alignment_zero_bits
            for y in range(16):
                for x in range(16):
                    bits.u(luma[mb_y * 16 + y][mb_x * 16 + x], 8)
            for plane in (cb, cr):
                for y in range(8):
                    for x in range(8):
                        bits.u(plane[mb_y * 8 + y][mb_x * 8 + x], 8)
    return _nal(0x65, bits.trailing())


# -- MP4 ----------------------------------------------------------------------------------


def _box(kind: bytes, *parts: bytes) -> bytes:
    body = b"".join(parts)
    return struct.pack(">I4s", 8 + len(body), kind) + body


def _full(kind: bytes, version: int, flags: int, *parts: bytes) -> bytes:
    return _box(kind, struct.pack(">I", (version << 24) | flags), *parts)


_MATRIX = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)


def _moov(sample_sizes: list[int], mdat_offset: int, sps: bytes, pps: bytes) -> bytes:
    delta = TIMESCALE // FPS
    duration = delta * len(sample_sizes)
    mvhd = _full(
        b"mvhd", 0, 0, struct.pack(">IIII", 0, 0, TIMESCALE, duration),
        struct.pack(">IH10x", 0x10000, 0x100), _MATRIX, bytes(24), struct.pack(">I", 2),
    )  # fmt: skip
    tkhd = _full(
        b"tkhd", 0, 3, struct.pack(">IIIII", 0, 0, 1, 0, duration), bytes(8),
        struct.pack(">hhhH", 0, 0, 0, 0), _MATRIX, struct.pack(">II", WIDTH << 16, HEIGHT << 16),
    )  # fmt: skip
    und = (ord("u") - 0x60) << 10 | (ord("n") - 0x60) << 5 | (ord("d") - 0x60)
    mdhd = _full(b"mdhd", 0, 0, struct.pack(">IIIIHH", 0, 0, TIMESCALE, duration, und, 0))
    hdlr = _full(b"hdlr", 0, 0, struct.pack(">I4s12x", 0, b"vide"), b"VideoHandler\0")
    avcc = _box(
        b"avcC", bytes([1, sps[1], sps[2], sps[3], 0xFF, 0xE1]), struct.pack(">H", len(sps)),
        sps, bytes([1]), struct.pack(">H", len(pps)), pps,
    )  # fmt: skip
    name = b"vidhook sandbox"
    avc1 = _box(
        b"avc1", bytes(6), struct.pack(">H", 1), bytes(16), struct.pack(">HH", WIDTH, HEIGHT),
        struct.pack(">III", 0x480000, 0x480000, 0), struct.pack(">H", 1),
        bytes([len(name)]) + name.ljust(31, b"\0"), struct.pack(">Hh", 0x18, -1), avcc,
    )  # fmt: skip
    stbl = _box(
        b"stbl",
        _full(b"stsd", 0, 0, struct.pack(">I", 1), avc1),
        _full(b"stts", 0, 0, struct.pack(">III", 1, len(sample_sizes), delta)),
        _full(b"stsc", 0, 0, struct.pack(">IIII", 1, 1, len(sample_sizes), 1)),
        _full(b"stsz", 0, 0, struct.pack(">II", 0, len(sample_sizes)),
              struct.pack(f">{len(sample_sizes)}I", *sample_sizes)),
        _full(b"stco", 0, 0, struct.pack(">II", 1, mdat_offset)),
    )  # fmt: skip
    dinf = _box(b"dinf", _full(b"dref", 0, 0, struct.pack(">I", 1), _full(b"url ", 0, 1)))
    minf = _box(b"minf", _full(b"vmhd", 0, 1, bytes(8)), dinf, stbl)
    trak = _box(b"trak", tkhd, _box(b"mdia", mdhd, hdlr, minf))
    return _box(b"moov", mvhd, trak)


@cache
def sample_video(size: int | None = None) -> bytes:
    """A short MP4 (64x64, 10 frames a second, two seconds), padded to ``size`` bytes."""
    sps, pps = _sps(), _pps()
    samples = [struct.pack(">I", len(nal)) + nal for nal in (_idr(i) for i in range(FRAMES))]
    ftyp = _box(b"ftyp", b"isom", struct.pack(">I", 0x200), b"isomiso2avc1mp41")
    placeholder = _moov([len(s) for s in samples], 0, sps, pps)
    offset = len(ftyp) + len(placeholder) + 8  # the samples start after mdat's header
    moov = _moov([len(s) for s in samples], offset, sps, pps)
    video = ftyp + moov + _box(b"mdat", *samples)
    if size is not None and size > len(video):
        padding = max(8, size - len(video))
        video += struct.pack(">I4s", padding, b"free") + bytes(padding - 8)
    return video


# -- PNG ----------------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@cache
def sample_cover() -> bytes:
    """The first frame's look as a 64x64 RGB PNG."""
    rows = b"".join(
        b"\0" + bytes(c for x in range(WIDTH) for c in (40 + x * 3, 90 + y * 2, 200 - x - y))
        for y in range(HEIGHT)
    )
    header = struct.pack(">IIBBBBB", WIDTH, HEIGHT, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(rows, 9))
        + _chunk(b"IEND", b"")
    )


# -- serving ------------------------------------------------------------------------------


def file_response(extension: str, settings: FileSettings) -> Response | None:
    """The result file for a path ending in ``extension``; None for an unknown one."""
    if extension == "mp4":
        content, media_type = sample_video(settings.video_bytes), "video/mp4"
    elif extension in ("png", "jpg"):
        content, media_type = sample_cover(), "image/png"
    else:
        return None
    headers = {"Content-Length": str(len(content))}
    if settings.rate is None:
        return Response(content, media_type=media_type, headers=headers)
    return StreamingResponse(
        _throttled(content, settings.rate), media_type=media_type, headers=headers
    )


async def _throttled(content: bytes, rate: float) -> AsyncIterator[bytes]:
    view = memoryview(content)
    for start in range(0, len(view), _CHUNK):
        chunk = bytes(view[start : start + _CHUNK])
        yield chunk
        await asyncio.sleep(len(chunk) / rate)
