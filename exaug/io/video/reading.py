"""Probing and decoding videos with PyAV: :func:`probe` (metadata, first frame decoded) and
:func:`read_frames` (upright RGB frames in chunks, with their original ``pts``)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.error
import numpy as np

from exaug.errors import ExaugError

# Demuxers that read one still picture; FFmpeg happily opens a PNG named .mp4 as a 1-frame video.
_IMAGE_FORMAT_SUFFIX = "_pipe"
_IMAGE_FORMATS = {"image2"}  # a file named .png/.jpg; animated formats (gif, apng) are videos


@dataclass(frozen=True)
class VideoInfo:
    """What the pipeline needs to know about an input video before decoding it.

    ``width``/``height`` are the displayed size (after ``rotation``), which is the size of the
    frames :func:`read_frames` yields; ``coded_width``/``coded_height`` are the stored size.
    ``rotation`` is in degrees clockwise (0, 90, 180, 270) to turn the stored picture upright, the
    convention of the legacy ``rotate`` tag phones write. The colour tags (FFmpeg's AVColorSpace,
    AVColorPrimaries, AVColorTransferCharacteristic values) let the writer reproduce the input's.
    """

    path: Path
    width: int
    height: int
    coded_width: int
    coded_height: int
    rotation: int
    fps: Fraction
    time_base: Fraction
    frames: int
    duration: float
    audio_streams: int
    container: str
    codec: str
    colorspace: int
    color_primaries: int
    color_trc: int


@dataclass(frozen=True)
class FrameChunk:
    """Consecutive decoded frames: ``frames`` (n,H,W,3) uint8 RGB upright, ``pts`` in the stream's
    time base (hand them to :meth:`VideoWriter.write` to keep the timing), ``times`` in seconds,
    and ``start``, the index of the first frame in the video (for progress and error messages)."""

    frames: np.ndarray
    pts: np.ndarray
    times: np.ndarray
    start: int

    def __len__(self) -> int:
        return len(self.frames)


def ffmpeg_reason(exc: BaseException) -> str:
    """FFmpeg's own words without the errno noise PyAV puts around them."""
    if isinstance(exc, av.error.FFmpegError) and exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    return str(exc) or type(exc).__name__


def _open_input(path: Path) -> av.container.InputContainer:
    """Open ``path`` as a video container or say in one line why it is not one."""
    if not path.exists():
        raise ExaugError(f"{path}: no such file")
    if not path.is_file():
        raise ExaugError(f"{path}: not a file")
    if not path.stat().st_size:
        raise ExaugError(f"{path}: empty file (0 bytes)")
    try:
        container = av.open(str(path), mode="r")
    except av.error.FFmpegError as exc:
        raise ExaugError(f"{path}: not a readable video file ({ffmpeg_reason(exc)})") from None
    name = container.format.name
    if name.endswith(_IMAGE_FORMAT_SUFFIX) or name in _IMAGE_FORMATS:
        container.close()
        raise ExaugError(f"{path}: a still image ({name}), not a video")
    if not container.streams.video:
        container.close()
        raise ExaugError(f"{path}: no video stream")
    return container


def _rotation(frame: av.VideoFrame, stream: av.video.stream.VideoStream) -> int:
    """Clockwise degrees to display ``frame`` upright, from its display matrix or the ``rotate`` tag.

    FFmpeg hands the container's display matrix to decoded frames as side data; PyAV reports it
    counter-clockwise in [-180, 180]. Matroska and old MP4 writers use a ``rotate`` tag (clockwise)
    instead. Angles that are not a multiple of 90 are rounded to the nearest one; mirroring in the
    matrix is ignored.
    """
    degrees = -float(frame.rotation)
    if degrees == 0:
        tags = {key.lower(): value for key, value in stream.metadata.items()}
        try:
            degrees = float(tags.get("rotate", 0))
        except ValueError:
            degrees = 0.0
    return int(round(degrees / 90)) % 4 * 90


def _upright(image: np.ndarray, rotation: int) -> np.ndarray:
    return np.rot90(image, k=-(rotation // 90)) if rotation else image


def _to_rgb(frame: av.VideoFrame) -> np.ndarray:
    # The frame's range must be passed explicitly: PyAV assumes limited range otherwise, which
    # would wash out full-range H.264 from phones. The colour matrix defaults to the frame's tag.
    return frame.to_ndarray(format="rgb24", src_color_range=frame.color_range)


def _scan(container: av.container.InputContainer, stream: av.video.stream.VideoStream, path: Path,
          count: bool) -> tuple[av.VideoFrame, int]:
    """Decode the first frame and, if ``count``, count the packets, in one pass without seeking.

    Counting is for containers whose header does not store the frame count (MKV, WebM, some AVI).
    """
    first: av.VideoFrame | None = None
    packets = 0
    try:
        for packet in container.demux(stream):
            packets += bool(packet.size)
            if first is None:
                decoded = packet.decode()  # the final empty packet flushes the decoder
                first = decoded[0] if decoded else None
            if first is not None and not count:
                break
    except av.error.FFmpegError as exc:
        what = "the first video frame" if first is None else "the video packets"
        raise ExaugError(f"{path}: cannot read {what} ({ffmpeg_reason(exc)})") from None
    if first is None:
        raise ExaugError(f"{path}: the video stream holds no decodable frame")
    return first, packets


def probe(path: Path | str) -> VideoInfo:
    """Read a video's metadata, decoding only its first frame.

    The first frame is decoded because FFmpeg exposes the rotation on decoded frames only, and
    because it proves early that the file is a decodable video rather than failing mid-run.
    A file truncated after its index still probes fine; :func:`read_frames` reports it.
    """
    path = Path(path)
    container = _open_input(path)
    with container:
        stream = container.streams.video[0]
        frame, packets = _scan(container, stream, path, count=not stream.frames)
        rotation = _rotation(frame, stream)
        coded_width, coded_height = frame.width, frame.height
        width, height = (coded_height, coded_width) if rotation in (90, 270) else (coded_width, coded_height)
        fps = stream.average_rate or stream.guessed_rate or Fraction(0)
        frames = stream.frames or packets
        if stream.duration is not None and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = float(frames / fps) if fps else 0.0
        context = stream.codec_context
        return VideoInfo(
            path=path, width=width, height=height, coded_width=coded_width, coded_height=coded_height,
            rotation=rotation, fps=Fraction(fps), time_base=Fraction(stream.time_base), frames=frames,
            duration=duration, audio_streams=len(container.streams.audio),
            container=container.format.name, codec=context.name,
            colorspace=int(context.colorspace), color_primaries=int(context.color_primaries),
            color_trc=int(context.color_trc),
        )


def read_frames(path: Path | str, chunk_size: int = 32) -> Iterator[FrameChunk]:
    """Decode the first video stream into chunks of up to ``chunk_size`` upright RGB frames.

    Chunks let the pipeline batch face detection and generation on the GPU while memory stays bounded (a
    1080p chunk of 32 frames is 200 MB). A frame without a timestamp gets the previous one plus one
    nominal frame, and so does one stamped no later than the frame before it (a stream whose every frame
    says the same time), so the writer always receives increasing pts. AVI stores no presentation times
    at all (its demuxer numbers packets in decoding order, so with B-frames the decoded frames' "pts"
    came out 1, 4, 3, 5, 2... and the encoder refused them): there every frame is placed at its index
    times one nominal frame, which is what an AVI's fixed rate means.
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    path = Path(path)
    container = _open_input(path)
    with container:
        stream = container.streams.video[0]
        time_base = Fraction(stream.time_base)
        rate = stream.average_rate or stream.guessed_rate
        step = max(1, round(1 / (rate * time_base))) if rate else 1
        rotation: int | None = None
        images: list[np.ndarray] = []
        pts: list[int] = []
        start = 0
        counted = container.format.name == "avi"
        last: int | None = None
        for index, frame in enumerate(_decode(container, stream, path)):
            if rotation is None:
                rotation = _rotation(frame, stream)
            images.append(_upright(_to_rgb(frame), rotation))
            if counted:
                last = index * step
            elif frame.pts is None or (last is not None and frame.pts <= last):
                last = 0 if last is None else last + step
            else:
                last = frame.pts
            pts.append(last)
            if len(images) == chunk_size:
                yield _chunk(images, pts, time_base, start)
                images, pts, start = [], [], index + 1
        if images:
            yield _chunk(images, pts, time_base, start)


def _decode(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
            path: Path) -> Iterator[av.VideoFrame]:
    """Decoded frames, with truncation detected instead of the video silently ending early.

    Frame-threaded decoding (much faster) swallows the error of a cut-off last packet, and the
    MP4 demuxer then just stops, so the number of packets is checked against the header's count
    (a packet count, not a frame count: edit lists may legitimately hide decoded frames).
    """
    stream.thread_type = "AUTO"
    expected, packets, index = stream.frames, 0, 0
    try:
        for packet in container.demux(stream):
            packets += bool(packet.size)
            for frame in packet.decode():
                yield frame
                index += 1
    except av.error.FFmpegError as exc:
        raise ExaugError(f"{path}: decoding failed at frame {index} ({ffmpeg_reason(exc)})") from None
    if expected and packets < expected:
        raise ExaugError(f"{path}: decoding failed at frame {index} (the file ends after {packets} of "
                         f"{expected} video packets: truncated?)")


def _chunk(images: list[np.ndarray], pts: list[int], time_base: Fraction, start: int) -> FrameChunk:
    stamps = np.asarray(pts, dtype=np.int64)
    return FrameChunk(frames=np.stack(images), pts=stamps, times=stamps * float(time_base), start=start)
