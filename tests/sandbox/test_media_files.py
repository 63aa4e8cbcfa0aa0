"""The fake providers' result files are real: an MP4 that players decode, a PNG cover."""

import shutil
import struct
import subprocess
import time
import zlib

import httpx
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from receiver.sandbox import ServerThread
from receiver.sandbox.media import (
    FRAMES,
    HEIGHT,
    WIDTH,
    FileSettings,
    file_response,
    sample_cover,
    sample_video,
)
from tests.tools import missing


def boxes(data, start=0, end=None):
    """Top-level ISO BMFF boxes as (type, offset, size)."""
    end = len(data) if end is None else end
    found = []
    while start < end:
        size, kind = struct.unpack(">I4s", data[start : start + 8])
        assert size >= 8 and start + size <= end, (kind, size)
        found.append((kind.decode(), start, size))
        start += size
    return found


def child(data, path):
    """The box at a path of types (moov/trak/mdia/...), as (offset, size)."""
    start, end = 0, len(data)
    for kind in path.split("/"):
        offset, size = next((o, s) for k, o, s in boxes(data, start, end) if k == kind)
        start, end = offset + (16 if kind == "stsd" else 8), offset + size
    return start, end


def test_the_video_is_an_mp4_whose_sample_table_points_at_its_frames():
    video = sample_video()
    assert [k for k, _, _ in boxes(video)] == ["ftyp", "moov", "mdat"]
    start, _ = child(video, "moov/trak/mdia/minf/stbl/stco")
    (offset,) = struct.unpack(">I", video[start + 8 : start + 12])
    start, _ = child(video, "moov/trak/mdia/minf/stbl/stsz")
    count = struct.unpack(">I", video[start + 8 : start + 12])[0]
    sizes = struct.unpack(f">{count}I", video[start + 12 : start + 12 + 4 * count])
    assert count == FRAMES
    _, mdat, mdat_size = boxes(video)[2]
    assert offset == mdat + 8 and sum(sizes) == mdat_size - 8
    # Each sample is one IDR NAL unit, length-prefixed: 4 bytes of length, then 0x65.
    for size in sizes:
        (length,) = struct.unpack(">I", video[offset : offset + 4])
        assert length == size - 4 and video[offset + 4] == 0x65
        offset += size


def test_a_size_is_reached_with_a_free_box_that_players_skip():
    video = sample_video(300_000)
    assert len(video) == 300_000
    assert [k for k, _, _ in boxes(video)] == ["ftyp", "moov", "mdat", "free"]
    assert video.startswith(sample_video()[:1000])


def test_ffmpeg_decodes_every_frame(tmp_path):
    if shutil.which("ffprobe") is None:
        missing("ffmpeg", "apt-get install ffmpeg")
    path = tmp_path / "v.mp4"
    path.write_bytes(sample_video(200_000))
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-show_entries",
         "stream=codec_name,width,height,nb_read_frames", "-of", "csv=p=0", str(path)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert probe.stdout.strip() == f"h264,{WIDTH},{HEIGHT},{FRAMES}"
    decoded = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "null", "-"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert decoded.returncode == 0 and decoded.stderr == ""


def test_the_cover_is_a_png_whose_chunks_check_out():
    png = sample_cover()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    at, kinds = 8, []
    while at < len(png):
        (length,) = struct.unpack(">I", png[at : at + 4])
        kind, data = png[at + 4 : at + 8], png[at + 8 : at + 8 + length]
        (crc,) = struct.unpack(">I", png[at + 8 + length : at + 12 + length])
        assert crc == zlib.crc32(kind + data)
        kinds.append(kind)
        if kind == b"IDAT":
            assert len(zlib.decompress(data)) == HEIGHT * (1 + 3 * WIDTH)
        at += 12 + length
    assert kinds == [b"IHDR", b"IDAT", b"IEND"]


def test_files_are_served_whole_or_throttled():
    settings = FileSettings(video_bytes=400_000)

    async def serve(request):
        return file_response(request.path_params["ext"], settings) or Response(status_code=404)

    app = Starlette(routes=[Route("/f.{ext}", serve)])
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=10) as http:
        whole = http.get("/f.mp4")
        cover = http.get("/f.png")
        settings.rate = 400_000
        started = time.monotonic()
        slow = http.get("/f.mp4")
        took = time.monotonic() - started
        assert http.get("/f.txt").status_code == 404
    assert whole.headers["content-type"] == "video/mp4"
    assert whole.content == slow.content == sample_video(400_000)
    assert cover.headers["content-type"] == "image/png" and cover.content == sample_cover()
    assert took >= 0.8  # 400 kB at 400 kB/s, paced in 64 KiB steps: never quicker
