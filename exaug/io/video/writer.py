"""Writing videos with PyAV: :class:`VideoWriter`, H.264 with the source's audio copied, atomically."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import av.error
import numpy as np
import torch

from exaug.errors import ExaugError
from exaug.io.atomic import Replacement, make_folder_for
from exaug.io.outputs import OutputLock
from exaug.io.video.reading import VideoInfo, ffmpeg_reason

# AVColorSpace values swscale converts with (BT.709, FCC, BT.470BG, SMPTE 170M/240M, BT.2020).
# The containers exaug suggests: they hold H.264 and the common audio codecs, and keep tags.
CONTAINERS = (".mp4", ".mov", ".mkv")
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
                "placebo")
_SUGGESTION = f"use {', '.join(CONTAINERS[:-1])} or {CONTAINERS[-1]}"
_SWSCALE_COLORSPACES = {1, 4, 5, 6, 7, 9, 10}


def check_container(path: Path | str) -> None:
    """Refuse an output exaug video does not write: it writes H.264 with the source's audio copied,
    and only :data:`CONTAINERS` keep that and the tags saying how the video was made. FFmpeg's AVI
    muxer takes H.264 but cannot store its reordered frames' timestamps (an edited AVI's frames came
    back with their times shuffled) and drops the tags; without a suffix FFmpeg knows no container."""
    path = Path(path)
    if path.suffix.lower() not in CONTAINERS:
        raise ExaugError(f"{path}: exaug writes {', '.join(CONTAINERS[:-1])} or {CONTAINERS[-1]} videos; "
                         f"name the output with one of those")


def _swscale_colorspace(colorspace: int) -> int | None:
    """The source's colour matrix if swscale knows it, else None for swscale's default, which is
    also what decoding an untagged (or unusually tagged) frame used."""
    return colorspace if colorspace in _SWSCALE_COLORSPACES else None


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

    The file is written to a hidden ``.<name>.tmp<suffix>`` beside the target and fsynced and
    renamed onto it (:class:`exaug.io.atomic.Replacement`) only when the ``with`` block ends
    normally, so an error, Ctrl-C or a power cut never leaves a half-written video where the user
    expects a finished one. The writer holds the target's :class:`~exaug.io.outputs.OutputLock`
    meanwhile, so the temporary is its own: one left by a killed run is overwritten and removed.

    Audio packets are copied unchanged (no re-encoding, no generation loss) and muxed as the video
    advances, each once the video has reached its timestamp, so the file stays interleaved and
    streams well; audio past the last frame is kept.

    ``metadata`` becomes container tags (how the video was made). MP4 and MOV keep only a few
    known tag names unless told to write free-form ones, so they are told; Matroska and WebM keep
    any (FFmpeg reads them back upper-cased); AVI drops them.
    """

    def __init__(self, path: Path | str, source: VideoInfo, *, width: int | None = None,
                 height: int | None = None, crf: int = 18, preset: str = "medium",
                 copy_audio: bool = True, codec: str = "libx264", pix_fmt: str = "yuv420p",
                 metadata: dict[str, str] | None = None):
        if codec == "libx264" and preset not in X264_PRESETS:  # x264 only said "invalid argument" at frame 0
            raise ExaugError(f"--preset {preset!r}: x264's presets are {', '.join(X264_PRESETS)}")
        self.path = Path(path)
        self.source = source
        self.frame_width = width or source.width
        self.frame_height = height or source.height
        self.width = self.frame_width + self.frame_width % 2
        self.height = self.frame_height + self.frame_height % 2
        self.crf, self.preset, self.codec, self.pix_fmt = crf, preset, codec, pix_fmt
        self.copy_audio = copy_audio and source.audio_streams > 0
        self.metadata = dict(metadata or {})
        self.frames_written = 0
        self._replacement: Replacement | None = None
        self._lock: OutputLock | None = None
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
        if self.path.is_dir():  # found here, not when the finished video cannot be moved onto it
            raise ExaugError(f"{self.path}: is a folder; name the video file (.mp4, .mov or .mkv) to write")
        make_folder_for(self.path)  # a folder not there yet is made, as align, augment and eval make theirs
        self._lock = OutputLock(self.path)
        # The suffix stays last so FFmpeg picks the container from it.
        self._replacement = Replacement(self.path, keep_suffix=True)
        try:
            try:
                self._output = av.open(str(self._replacement.temporary), mode="w")
            except ValueError:
                raise ExaugError(f"{self.path}: not a video file name FFmpeg knows ({_SUGGESTION})") from None
            self._add_metadata()
            self._add_video_stream()
            if self.copy_audio:
                self._add_audio_streams()
        except BaseException as exc:
            self.abort()
            if isinstance(exc, av.error.FFmpegError):
                raise ExaugError(f"{self.path}: cannot create the video ({ffmpeg_reason(exc)})") from None
            raise

    def _add_metadata(self) -> None:
        """Tags are written with the header, at the first packet: set them before any."""
        assert self._output is not None
        if self.metadata and {"mov", "mp4", "ipod"} & set(self._output.format.name.split(",")):
            self._output.options["movflags"] = "use_metadata_tags"
        self._output.metadata.update(self.metadata)

    def _check_supported(self, codec: str, what: str) -> None:
        assert self._output is not None
        if codec not in self._output.supported_codecs:
            fmt = self._output.format.name
            raise ExaugError(f"{self.path}: the {fmt} container cannot hold {what} ({codec}); "
                             f"{_SUGGESTION}")

    def _add_video_stream(self) -> None:
        assert self._output is not None
        self._check_supported(self.codec, "the video")
        options = {"crf": str(self.crf), "preset": self.preset}
        if self.codec == "libx264" and torch.backends.cpu.get_cpu_capability() == "AVX512":
            # x264's AVX-512 code (the mb-tree rate control's, by its own switches) let leftover heap
            # bytes steer its choices at widths that are not a multiple of 128: the same frames
            # encoded to different files run to run. Its AVX2 code does not, at the same speed.
            options["x264-params"] = "asm=AVX2"
        stream = self._output.add_stream(self.codec, rate=self.source.fps or None, options=options)
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
                             f"({ffmpeg_reason(exc)})") from None

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
            raise ExaugError(f"{self.path}: finishing the video failed ({ffmpeg_reason(exc)})") from None
        except BaseException:
            self.abort()
            raise
        self._output = None
        self._close_audio_input()
        assert self._replacement is not None
        try:
            self._replacement.commit(sync_folder=True)
        except OSError as exc:
            self.abort()
            raise ExaugError(f"{self.path}: cannot move the finished video into place ({exc.strerror})") from None
        self._replacement = None
        self._release()

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
        if self._replacement is not None:
            self._replacement.discard()
            self._replacement = None
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _close_audio_input(self) -> None:
        if self._audio_input is not None:
            self._audio_input.close()
            self._audio_input = None
            self._audio_packets = None
