"""exaug.io.video on the real clip (1080p H.264 + AAC) and on small files made here with PyAV."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from exaug.errors import ExaugError
from exaug.io.video import VideoInfo, VideoWriter, probe, read_frames
from videotools import all_frames, audio_packets, psnr

SMALL = (96, 160)  # height, width of the downscaled test frames


@pytest.fixture(scope="module")
def small_frames(video_clip: Path) -> np.ndarray:
    """Twelve frames of the real clip at 160x96: real texture and motion, encodable in milliseconds."""
    with av.open(str(video_clip)) as container:
        frames = []
        for frame in container.decode(video=0):
            frames.append(frame.reformat(width=SMALL[1], height=SMALL[0], format="rgb24").to_ndarray())
            if len(frames) == 12:
                return np.stack(frames)
    raise AssertionError("clip shorter than 12 frames")


def make_video(path: Path, frames: np.ndarray, codec: str = "libx264", *, pts: list[int] | None = None,
               time_base: Fraction = Fraction(1, 25), rotation: int | None = None,
               rotate_tag: str | None = None, audio: str | None = None) -> Path:
    """Write ``frames`` with PyAV alone, so the reader is tested against files it did not write.

    ``rotation`` goes into the display matrix (counter-clockwise, PyAV's convention); ``rotate_tag``
    into the legacy stream tag; ``audio`` names an audio encoder for a 1 s tone.
    """
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=round(1 / time_base) if pts is None else 25)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        stream.codec_context.time_base = time_base
        if rotation is not None:
            stream.set_display_rotation(rotation)
        if rotate_tag is not None:
            stream.metadata["rotate"] = rotate_tag
        if audio:
            sound = out.add_stream(audio, rate=48000, layout="stereo")
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = (pts[i] if pts else i), time_base
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
        if audio:
            tone = (0.2 * np.sin(np.arange(48000) * 2 * np.pi * 440 / 48000)).astype(np.float32)
            samples = av.AudioFrame.from_ndarray(np.stack([tone, tone]).reshape(1, -1), format="flt", layout="stereo")
            samples.sample_rate, samples.pts = 48000, 0
            out.mux(sound.encode(samples))
            out.mux(sound.encode(None))
    return path


def round_trip(src: Path, out: Path, **options) -> VideoInfo:
    info = probe(src)
    with VideoWriter(out, info, **options) as writer:
        for chunk in read_frames(src, chunk_size=8):
            writer.write(chunk.frames, chunk.pts)
    return probe(out)


def no_leftovers(folder: Path) -> bool:
    return not any(p.name.startswith(".") and ".tmp" in p.name for p in folder.iterdir())


# --- the real clip -------------------------------------------------------------------------------

def test_probe_real_clip(video_clip: Path) -> None:
    info = probe(video_clip)
    assert (info.width, info.height, info.rotation) == (1920, 1080, 0)
    assert (info.coded_width, info.coded_height) == (1920, 1080)
    assert info.fps == 25 and isinstance(info.fps, Fraction)
    assert info.frames == 105
    assert info.duration == pytest.approx(4.2, abs=0.04)
    assert info.audio_streams == 1
    assert info.codec == "h264" and "mp4" in info.container


def test_read_frames_real_clip(video_clip: Path) -> None:
    chunks = list(read_frames(video_clip, chunk_size=32))
    assert [len(c) for c in chunks] == [32, 32, 32, 9]
    assert [c.start for c in chunks] == [0, 32, 64, 96]
    assert all(c.frames.shape[1:] == (1080, 1920, 3) and c.frames.dtype == np.uint8 for c in chunks)
    pts = np.concatenate([c.pts for c in chunks])
    times = np.concatenate([c.times for c in chunks])
    assert np.all(np.diff(pts) > 0)
    np.testing.assert_allclose(times, np.arange(105) / 25, atol=1e-6)


@pytest.fixture(scope="module")
def clip_round_trip(video_clip: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All 105 1080p frames through VideoWriter (about 4 s on two cores with ultrafast)."""
    out = tmp_path_factory.mktemp("clip") / "out.mp4"
    round_trip(video_clip, out, preset="ultrafast", crf=18)
    return out


def test_round_trip_keeps_timing_and_size(video_clip: Path, clip_round_trip: Path) -> None:
    src, out = probe(video_clip), probe(clip_round_trip)
    assert (out.width, out.height, out.frames, out.fps) == (src.width, src.height, src.frames, src.fps)
    assert out.duration == pytest.approx(src.duration, abs=1 / 25)
    assert out.audio_streams == 1 and out.codec == "h264"
    assert no_leftovers(clip_round_trip.parent)


def test_round_trip_copies_audio_bytes(video_clip: Path, clip_round_trip: Path) -> None:
    original, copied = audio_packets(video_clip), audio_packets(clip_round_trip)
    assert len(copied) == len(original) > 100
    assert [b for b, _ in copied] == [b for b, _ in original]
    np.testing.assert_allclose([t for _, t in copied], [t for _, t in original], atol=1e-6)
    with av.open(str(clip_round_trip)) as container:  # the muxed audio still decodes
        assert sum(f.samples for f in container.decode(audio=0)) > 4 * 48000


def test_round_trip_quality_and_pts(video_clip: Path, clip_round_trip: Path) -> None:
    scores = []
    pts_in, pts_out = [], []
    for a, b in zip(read_frames(video_clip, 16), read_frames(clip_round_trip, 16), strict=True):
        scores.append(psnr(a.frames, b.frames))
        pts_in.append(a.pts)
        pts_out.append(b.pts)
    assert min(scores) > 40
    np.testing.assert_array_equal(np.concatenate(pts_in), np.concatenate(pts_out))


def test_round_trip_interleaves_audio(clip_round_trip: Path) -> None:
    """Audio is muxed along the video, not appended at the end: players need no huge buffers."""
    with av.open(str(clip_round_trip)) as container:
        kinds = [p.stream.type for p in container.demux() if p.size]
    first_half = kinds[: len(kinds) // 2]
    assert "audio" in first_half and "video" in first_half


def test_writer_exception_leaves_nothing(video_clip: Path, small_frames: np.ndarray, tmp_path: Path) -> None:
    info = probe(video_clip)
    out = tmp_path / "out.mp4"
    for error in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(error)):
            with VideoWriter(out, info, width=SMALL[1], height=SMALL[0], preset="ultrafast") as writer:
                writer.write(small_frames[:3], [0, 512, 1024])
                assert any(p.name.startswith(".out.mp4.tmp") for p in tmp_path.iterdir())
                raise error
        assert list(tmp_path.iterdir()) == []


def test_writer_abort_keeps_existing_output(video_clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    out.write_bytes(b"previous result")
    with pytest.raises(RuntimeError):
        with VideoWriter(out, probe(video_clip), copy_audio=False):
            raise RuntimeError("boom")
    assert out.read_bytes() == b"previous result"
    assert no_leftovers(tmp_path)


def test_writer_refuses_a_folder_before_encoding_and_never_replaces_one(video_clip: Path, small_frames: np.ndarray,
                                                                        tmp_path: Path) -> None:
    (tmp_path / "out.mp4").mkdir()
    with pytest.raises(ExaugError, match="out.mp4: is a folder"):
        VideoWriter(tmp_path / "out.mp4", probe(video_clip), copy_audio=False).open()
    assert no_leftovers(tmp_path)
    (tmp_path / "out.mp4").rmdir()
    with pytest.raises(ExaugError, match="out.mp4: cannot move the finished video into place"):
        with VideoWriter(tmp_path / "out.mp4", probe(video_clip), width=SMALL[1], height=SMALL[0],
                         copy_audio=False, preset="ultrafast") as writer:
            writer.write(small_frames[:2])
            (tmp_path / "out.mp4").mkdir()  # made while the video was being written
    assert no_leftovers(tmp_path)


def test_writer_checks_frame_shape(video_clip: Path, small_frames: np.ndarray, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="uint8"):
        with VideoWriter(tmp_path / "out.mp4", probe(video_clip), copy_audio=False) as writer:
            writer.write(small_frames)
    assert list(tmp_path.iterdir()) == []


def test_side_by_side_and_odd_sizes_are_padded(video_clip: Path, small_frames: np.ndarray, tmp_path: Path) -> None:
    """Any size can be written (side-by-side doubles the width); odd sizes gain one edge pixel."""
    odd = np.concatenate([small_frames, small_frames], axis=2)[:, :95, :319]
    out = tmp_path / "sbs.mp4"
    with VideoWriter(out, probe(video_clip), width=319, height=95, crf=10, preset="ultrafast") as writer:
        writer.write(odd, pts=np.arange(len(odd)) * 512)
    info = probe(out)
    assert (info.width, info.height, info.frames) == (320, 96, len(odd))
    decoded, _ = all_frames(out)
    assert psnr(decoded[:, :95, :319], odd) > 35
    np.testing.assert_allclose(decoded[:, :95, 319].astype(float), decoded[:, :95, 318], atol=12)


def test_writer_generates_pts_without_source_timing(video_clip: Path, small_frames: np.ndarray,
                                                    tmp_path: Path) -> None:
    out = tmp_path / "gen.mp4"
    with VideoWriter(out, probe(video_clip), width=SMALL[1], height=SMALL[0], copy_audio=False,
                     preset="ultrafast") as writer:
        writer.write(small_frames[:6])
        writer.write(small_frames[6:])
    info = probe(out)
    assert (info.frames, info.fps, info.audio_streams) == (12, 25, 0)
    np.testing.assert_allclose(next(read_frames(out, 12)).times, np.arange(12) / 25, atol=1e-6)


# --- other containers and codecs ----------------------------------------------------------------

CONTAINERS = [("avi", "mjpeg"), ("mov", "libx264"), ("mkv", "libx264")]
CONTAINERS += [("webm", codec) for codec in ("libvpx-vp9", "libvpx") if codec in av.codecs_available]


@pytest.mark.parametrize(("suffix", "codec"), CONTAINERS)
def test_other_containers_round_trip(suffix: str, codec: str, small_frames: np.ndarray, tmp_path: Path) -> None:
    src = make_video(tmp_path / f"in.{suffix}", small_frames, codec)
    info = probe(src)
    assert (info.width, info.height, info.frames, info.fps) == (SMALL[1], SMALL[0], 12, 25)
    frames, _ = all_frames(src)
    assert frames.shape == (12, *SMALL, 3)
    assert psnr(frames, small_frames) > 25  # decoded the right picture, not garbage
    out_suffix = "mkv" if suffix == "webm" else suffix  # WebM cannot hold H.264
    out = round_trip(src, tmp_path / f"out.{out_suffix}", preset="ultrafast")
    assert (out.width, out.height, out.frames) == (SMALL[1], SMALL[0], 12)
    assert len(all_frames(out.path)[0]) == 12


def test_h264_with_b_frames_in_avi_reads_in_display_order_at_steady_times(small_frames: np.ndarray,
                                                                         tmp_path: Path) -> None:
    """AVI keeps no presentation times: its demuxer numbers packets in decoding order, so PyAV's
    decoded frames carry B-frame-shuffled "pts" (an encoder fed them refused to finish the file)."""
    src = make_video(tmp_path / "in.avi", small_frames, "libx264")
    with av.open(str(src)) as container:
        shuffled = [frame.pts for frame in container.decode(video=0)]
    assert shuffled != sorted(shuffled), "the case: PyAV's own timestamps out of order"
    chunks = list(read_frames(src, chunk_size=5))
    assert np.concatenate([chunk.pts for chunk in chunks]).tolist() == list(range(12))
    frames = np.concatenate([chunk.frames for chunk in chunks])
    assert all(psnr(frames[i], small_frames[i]) > psnr(frames[i], small_frames[j]) + 3
               for i in range(12) for j in (i - 1, i + 1) if 0 <= j < 12), "each frame in its place"
    out = round_trip(src, tmp_path / "out.mp4", preset="ultrafast")
    assert out.frames == 12 and abs(out.duration - 12 / 25) < 1 / 25


def test_frames_all_stamped_the_same_time_get_steady_increasing_times(small_frames: np.ndarray,
                                                                      tmp_path: Path) -> None:
    """An MPEG-TS whose every frame carries one timestamp (frames muxed without their own): the MP4
    encoder refused to finish such a file; each frame after the first now follows by one frame."""
    src = tmp_path / "same.ts"
    with av.open(str(src), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = SMALL[1], SMALL[0], "yuv420p"
        for image in small_frames:
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.time_base, frame.pts = Fraction(1, 12800), None  # a time base but no time of its own
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    with av.open(str(src)) as container:
        stamps = [frame.pts for frame in container.decode(video=0)]
    assert len(set(stamps)) == 1, "the case: one time for every frame"
    info = probe(src)
    step = round(1 / (25 * info.time_base))
    read = np.concatenate([chunk.pts for chunk in read_frames(src, chunk_size=5)])
    assert read.tolist() == [stamps[0] + i * step for i in range(12)]
    out = round_trip(src, tmp_path / "out.mp4", preset="ultrafast")
    assert out.frames == 12 and abs(out.duration - 12 / 25) < 1 / 25


@pytest.mark.parametrize("suffix", ["mp4", "mov", "mkv"])
def test_metadata_tags_are_kept(suffix: str, small_frames: np.ndarray, tmp_path: Path) -> None:
    """Free-form tags (how exaug made the video) survive in MP4 and MOV too, which keep only known
    tag names by default; Matroska reads them back upper-cased."""
    src = make_video(tmp_path / "in.mp4", small_frames)
    round_trip(src, tmp_path / f"out.{suffix}", preset="ultrafast", metadata={"exaug_like": '{"sha256": "ab"}'})
    with av.open(str(tmp_path / f"out.{suffix}")) as container:
        tags = {name.lower(): value for name, value in container.metadata.items()}
    assert tags["exaug_like"] == '{"sha256": "ab"}'


def test_variable_frame_rate_pts_kept(small_frames: np.ndarray, tmp_path: Path) -> None:
    pts = [0, 40, 80, 200, 230, 260, 500, 540, 580, 620, 900, 940]  # milliseconds, irregular
    src = make_video(tmp_path / "vfr.mp4", small_frames, pts=pts, time_base=Fraction(1, 1000))
    _, read_pts = all_frames(src)
    times_in = read_pts * float(probe(src).time_base)
    np.testing.assert_allclose(times_in, np.array(pts) / 1000, atol=1e-6)
    out = round_trip(src, tmp_path / "out.mp4", preset="ultrafast")
    _, out_pts = all_frames(out.path)
    np.testing.assert_allclose(out_pts * float(out.time_base), times_in, atol=1e-6)
    assert out.frames == 12


@pytest.mark.parametrize(("rotation", "tag", "clockwise"), [(90, None, 270), (-90, None, 90), (180, None, 180),
                                                            (None, "90", 90)])
def test_rotation_applied(rotation: int | None, tag: str | None, clockwise: int, small_frames: np.ndarray,
                          tmp_path: Path) -> None:
    """Display matrix (written by PyAV into MP4) and the legacy ``rotate`` tag (kept by Matroska)."""
    suffix = "mkv" if tag else "mp4"
    src = make_video(tmp_path / f"rot.{suffix}", small_frames[:3], rotation=rotation, rotate_tag=tag)
    info = probe(src)
    assert info.rotation == clockwise
    assert (info.coded_width, info.coded_height) == (SMALL[1], SMALL[0])
    expected = np.rot90(small_frames[:3], k=-clockwise // 90, axes=(1, 2))
    assert (info.height, info.width) == expected.shape[1:3]
    frames, _ = all_frames(src)
    assert frames.shape == expected.shape
    assert psnr(frames, expected) > 30
    out = round_trip(src, tmp_path / "out.mp4", preset="ultrafast")  # written upright, no matrix
    assert (out.rotation, out.width, out.height) == (0, info.width, info.height)


def test_audio_the_container_cannot_hold(small_frames: np.ndarray, tmp_path: Path) -> None:
    src = make_video(tmp_path / "opus.mkv", small_frames[:3], audio="libopus")
    assert probe(src).audio_streams == 1
    with pytest.raises(ExaugError, match=r"out\.avi: the avi container cannot hold the audio .*opus"):
        with VideoWriter(tmp_path / "out.avi", probe(src)):
            pass
    with pytest.raises(ExaugError, match=r"out\.webm: the webm container cannot hold the video \(libx264\)"):
        with VideoWriter(tmp_path / "out.webm", probe(src)):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["opus.mkv"]
    out = round_trip(src, tmp_path / "out.mkv", preset="ultrafast")
    assert out.audio_streams == 1
    assert [b for b, _ in audio_packets(out.path)] == [b for b, _ in audio_packets(src)]


# --- errors ------------------------------------------------------------------------------------

def test_probe_errors_name_file_and_reason(video_clip: Path, tmp_path: Path) -> None:
    from PIL import Image

    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n")
    png = tmp_path / "picture.mp4"
    Image.new("RGB", (32, 24)).save(png, format="PNG")
    half = tmp_path / "half.mp4"
    data = video_clip.read_bytes()
    half.write_bytes(data[: len(data) // 2])
    sound = tmp_path / "sound.m4a"
    with av.open(str(sound), "w") as out:
        stream = out.add_stream("aac", rate=48000)
        samples = av.AudioFrame.from_ndarray(np.zeros((1, 4096), np.float32), format="fltp", layout="mono")
        samples.sample_rate, samples.pts = 48000, 0
        out.mux(stream.encode(samples))
        out.mux(stream.encode(None))
    cases = {tmp_path / "missing.mp4": "no such file", text: "not a readable video", png: "still image",
             half: "not a readable video", sound: "no video stream", tmp_path: "not a file"}
    for path, reason in cases.items():
        with pytest.raises(ExaugError, match=reason) as err:
            probe(path)
        assert str(path) in str(err.value)
        with pytest.raises(ExaugError, match=reason):
            next(read_frames(path))


def test_truncated_after_index_fails_with_frame_index(video_clip: Path, tmp_path: Path) -> None:
    """A file cut after its index (faststart MP4) probes fine but must not end silently short."""
    fast = tmp_path / "fast.mp4"
    with av.open(str(video_clip)) as src, av.open(str(fast), "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(video=0):
            if packet.size:
                packet.stream = stream
                out.mux(packet)
    data = fast.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    assert probe(cut).frames == 105
    with pytest.raises(ExaugError, match=r"cut\.mp4: decoding failed at frame \d+") as err:
        for _ in read_frames(cut, chunk_size=8):
            pass
    assert int(str(err.value).split("frame ")[1].split()[0]) > 10


def test_the_same_frames_encode_to_the_same_file(video_clip, tmp_path):
    """An edit run twice gives the same bytes. x264's AVX-512 code let leftover heap bytes steer its
    choices at widths that are not a multiple of 128 (720x480 here): outputs differed run to run."""
    with av.open(str(video_clip)) as container:
        frames = [frame.reformat(width=720, height=480, format="rgb24").to_ndarray()
                  for _, frame in zip(range(30), container.decode(video=0))]
    source = probe(video_clip)
    contents = set()
    for attempt in range(4):
        junk = [bytearray(np.random.default_rng(attempt).bytes(1 << 20)) for _ in range(8)]  # stir the heap
        output = tmp_path / f"same{attempt}.mp4"
        with VideoWriter(output, source, width=720, height=480, copy_audio=False) as writer:
            writer.write(np.stack(frames))
        contents.add(output.read_bytes())
        del junk
    assert len(contents) == 1
