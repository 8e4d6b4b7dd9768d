"""Video in and out with PyAV: metadata, frames in display orientation, H.264 with the audio copied.

The video pipeline edits faces frame by frame and must hand back a file that differs from the
input only in the faces: same frame count, same timestamps (variable frame rate included), same
audio bytes. Hence frames carry their original ``pts`` through the pipeline, the writer encodes
them with the input's time base, and audio packets are remuxed, never decoded.

Every failure a user can cause (missing, non-video, truncated, corrupt file; an output container
that cannot hold the audio) becomes an :class:`~exaug.errors.ExaugError` naming the file and the
reason; raw ``av`` exceptions never escape.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import av.error
import numpy as np

from exaug.errors import ExaugError

# Demuxers that read one still picture; FFmpeg happily opens a PNG named .mp4 as a 1-frame video.
_IMAGE_FORMAT_SUFFIX = "_pipe"
_IMAGE_FORMATS = {"image2"}  # a file named .png/.jpg; animated formats (gif, apng) are videos
# AVColorSpace values swscale converts with (BT.709, FCC, BT.470BG, SMPTE 170M/240M, BT.2020).
_SWSCALE_COLORSPACES = {1, 4, 5, 6, 7, 9, 10}


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


def _reason(exc: BaseException) -> str:
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
    try:
        container = av.open(str(path), mode="r")
    except av.error.FFmpegError as exc:
        raise ExaugError(f"{path}: not a readable video file ({_reason(exc)})") from None
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


def _swscale_colorspace(colorspace: int) -> int | None:
    """The source's colour matrix if swscale knows it, else None for swscale's default, which is
    also what decoding an untagged (or unusually tagged) frame used."""
    return colorspace if colorspace in _SWSCALE_COLORSPACES else None


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
        raise ExaugError(f"{path}: cannot read {what} ({_reason(exc)})") from None
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

    Chunks let the pipeline batch face detection and generation on the GPU while memory stays
    bounded (a 1080p chunk of 32 frames is 200 MB). A frame without a timestamp (some AVI) gets
    the previous one plus one nominal frame, so the writer still receives increasing pts.
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
        for index, frame in enumerate(_decode(container, stream, path)):
            if rotation is None:
                rotation = _rotation(frame, stream)
            images.append(_upright(_to_rgb(frame), rotation))
            pts.append(frame.pts if frame.pts is not None else (pts[-1] + step if pts else 0))
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
        raise ExaugError(f"{path}: decoding failed at frame {index} ({_reason(exc)})") from None
    if expected and packets < expected:
        raise ExaugError(f"{path}: decoding failed at frame {index} (the file ends after {packets} of "
                         f"{expected} video packets: truncated?)")


def _chunk(images: list[np.ndarray], pts: list[int], time_base: Fraction, start: int) -> FrameChunk:
    stamps = np.asarray(pts, dtype=np.int64)
    return FrameChunk(frames=np.stack(images), pts=stamps, times=stamps * float(time_base), start=start)


class VideoWriter:
    """Encode upright RGB frames to H.264 and copy the source's audio, atomically.

    Frames are written as given, in display orientation, with no rotation metadata: the pipeline
    edits upright frames, and baking the rotation in plays the same everywhere (some players and
    editors ignore the display matrix). Each frame keeps its source ``pts`` in the source's time
    base, so frame count, variable frame rate and duration survive. Colour tags (matrix, primaries,
    transfer) are copied from the source and the RGB->YUV conversion uses the same matrix that
    decoding used, so players show the output with the colours of the input.

    yuv420p needs even sizes: an odd width or height is padded by repeating the last column/row
    (no source pixel is lost; cropping would drop one). Even sizes are kept exactly.

    The file is written to a hidden ``.<name>.partial-XXXX<suffix>`` beside the target and renamed
    onto it only when the ``with`` block ends normally, so an error or Ctrl-C never leaves a
    half-written video where the user expects a finished one.

    Audio packets are copied unchanged (no re-encoding, no generation loss) and muxed as the video
    advances, each once the video has reached its timestamp, so the file stays interleaved and
    streams well; audio past the last frame is kept.
    """

    def __init__(self, path: Path | str, source: VideoInfo, *, width: int | None = None,
                 height: int | None = None, crf: int = 18, preset: str = "medium",
                 copy_audio: bool = True, codec: str = "libx264", pix_fmt: str = "yuv420p"):
        self.path = Path(path)
        self.source = source
        self.frame_width = width or source.width
        self.frame_height = height or source.height
        self.width = self.frame_width + self.frame_width % 2
        self.height = self.frame_height + self.frame_height % 2
        self.crf, self.preset, self.codec, self.pix_fmt = crf, preset, codec, pix_fmt
        self.copy_audio = copy_audio and source.audio_streams > 0
        self.frames_written = 0
        self._tmp: Path | None = None
        self._output: av.container.OutputContainer | None = None
        self._audio_input: av.container.InputContainer | None = None
        self._audio_packets: Iterator[av.Packet] | None = None
        self._pending_audio: av.Packet | None = None
        self._audio_map: dict[int, av.stream.Stream] = {}
        self._last_pts: int | None = None

    def __enter__(self) -> VideoWriter:
        self.open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def open(self) -> None:
        """Create the temp file and its streams (done by ``with``; public for non-``with`` use)."""
        if not self.path.parent.is_dir():
            raise ExaugError(f"{self.path}: the output folder does not exist")
        # Not mkstemp: its 0600 file would keep those permissions after the rename. The suffix
        # stays last so FFmpeg picks the container from it.
        self._tmp = self.path.with_name(f".{self.path.name}.partial-{secrets.token_hex(4)}{self.path.suffix}")
        try:
            self._output = av.open(str(self._tmp), mode="w")
            self._add_video_stream()
            if self.copy_audio:
                self._add_audio_streams()
        except BaseException as exc:
            self.abort()
            if isinstance(exc, av.error.FFmpegError):
                raise ExaugError(f"{self.path}: cannot create the video ({_reason(exc)})") from None
            raise

    def _check_supported(self, codec: str, what: str) -> None:
        assert self._output is not None
        if codec not in self._output.supported_codecs:
            fmt = self._output.format.name
            raise ExaugError(f"{self.path}: the {fmt} container cannot hold {what} ({codec}); "
                             f"use .mp4, .mov or .mkv")

    def _add_video_stream(self) -> None:
        assert self._output is not None
        self._check_supported(self.codec, "the video")
        stream = self._output.add_stream(self.codec, rate=self.source.fps or None,
                                         options={"crf": str(self.crf), "preset": self.preset})
        stream.width, stream.height, stream.pix_fmt = self.width, self.height, self.pix_fmt
        stream.time_base = self.source.time_base
        stream.codec_context.time_base = self.source.time_base
        stream.thread_type = "AUTO"
        context = stream.codec_context
        context.colorspace = self.source.colorspace
        context.color_primaries = self.source.color_primaries
        context.color_trc = self.source.color_trc
        self._video = stream

    def _add_audio_streams(self) -> None:
        assert self._output is not None
        self._audio_input = av.open(str(self.source.path), mode="r")
        for stream in self._audio_input.streams.audio:
            self._check_supported(stream.codec_context.name,
                                  f"the audio of {self.source.path} without re-encoding")
            self._audio_map[stream.index] = self._output.add_stream_from_template(stream)
        self._audio_packets = iter(self._audio_input.demux(*self._audio_input.streams.audio))

    def write(self, frames: np.ndarray, pts: Sequence[int] | np.ndarray | None = None) -> None:
        """Encode (n,H,W,3) uint8 RGB frames; ``pts`` are the source timestamps (FrameChunk.pts).

        Without ``pts`` frames follow the last one at the nominal frame rate, for generated videos.
        """
        if self._output is None:
            raise RuntimeError("VideoWriter.write() outside its with-block")
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.shape[1:] != (self.frame_height, self.frame_width, 3) or frames.dtype != np.uint8:
            raise ValueError(f"frames must be (n,{self.frame_height},{self.frame_width},3) uint8, "
                             f"got {frames.shape} {frames.dtype}")
        if pts is not None and len(pts) != len(frames):
            raise ValueError(f"{len(frames)} frames but {len(pts)} timestamps")
        try:
            for i, image in enumerate(frames):
                self._write_one(image, int(pts[i]) if pts is not None else self._next_pts())
        except av.error.FFmpegError as exc:
            raise ExaugError(f"{self.path}: encoding failed at frame {self.frames_written} "
                             f"({_reason(exc)})") from None

    def _next_pts(self) -> int:
        if self._last_pts is None:
            return 0
        fps = self.source.fps or Fraction(25)
        return self._last_pts + max(1, round(1 / (fps * self.source.time_base)))

    def _write_one(self, image: np.ndarray, pts: int) -> None:
        assert self._output is not None
        if image.shape[:2] != (self.height, self.width):
            image = np.pad(image, ((0, self.height - image.shape[0]), (0, self.width - image.shape[1]), (0, 0)),
                           mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        # The same matrix decoding used (the source's tag, or swscale's default when untagged).
        frame = frame.reformat(format=self.pix_fmt, dst_colorspace=_swscale_colorspace(self.source.colorspace),
                               dst_color_range="MPEG")
        frame.pts, frame.time_base = pts, self.source.time_base
        self._mux_audio_until(float(pts * self.source.time_base))
        self._output.mux(self._video.encode(frame))
        self._last_pts = pts
        self.frames_written += 1

    def _mux_audio_until(self, seconds: float | None) -> None:
        """Mux the source's audio packets up to ``seconds`` (all of them when None)."""
        if self._audio_packets is None:
            return
        assert self._output is not None
        while True:
            packet = self._pending_audio or next(self._audio_packets, None)
            self._pending_audio = None
            if packet is None:
                self._audio_packets = None
                return
            if packet.dts is None or not packet.size:
                continue  # demuxer flush markers carry no data
            if seconds is not None and packet.dts * packet.time_base > seconds:
                self._pending_audio = packet
                return
            packet.stream = self._audio_map[packet.stream_index]
            self._output.mux(packet)

    def close(self) -> None:
        """Flush the encoder and the remaining audio, then move the file onto the target."""
        if self._output is None:
            return
        try:
            self._output.mux(self._video.encode(None))
            self._mux_audio_until(None)
            self._output.close()
        except av.error.FFmpegError as exc:
            self.abort()
            raise ExaugError(f"{self.path}: finishing the video failed ({_reason(exc)})") from None
        except BaseException:
            self.abort()
            raise
        self._output = None
        self._close_audio_input()
        assert self._tmp is not None
        try:
            os.replace(self._tmp, self.path)
        except OSError as exc:
            self.abort()
            raise ExaugError(f"{self.path}: cannot move the finished video into place ({exc.strerror})") from None
        self._tmp = None

    def abort(self) -> None:
        """Drop everything written so far; the target is left as it was."""
        for close in (self._output.close if self._output else None, self._close_audio_input):
            if close is None:
                continue
            try:
                close()
            except av.error.FFmpegError:
                pass  # the file is being deleted; a failed trailer does not matter
        self._output = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None

    def _close_audio_input(self) -> None:
        if self._audio_input is not None:
            self._audio_input.close()
            self._audio_input = None
            self._audio_packets = None
