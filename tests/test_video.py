"""``exaug video`` on the real 1080p clip: timing and audio kept, faceless frames untouched, faces edited."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from exaug.errors import ExaugError
from exaug.io.video import VideoWriter, probe
from exaug.model.generator import ExpressionGenerator
from exaug.pipelines.stages import SPLIT_SWITCH_INTERVAL, in_background
from exaug.pipelines.timespan import TimeSpan, parse_time
from exaug.pipelines.video import STAGES, VideoOptions, edit_video
from conftest import REPO
from videotools import Shot, all_frames, audio_packets, photo_clip, psnr


@pytest.fixture(scope="module")
def edited(tmp_path_factory, video_clip, test_checkpoint):
    output = tmp_path_factory.mktemp("video") / "happy.mp4"
    generator = ExpressionGenerator.load(test_checkpoint, "cpu")
    summary = edit_video(video_clip, output, generator, VideoOptions(emotion="happy", preset="veryfast"),
                         show_progress=False)
    return output, summary


def test_timing_size_and_audio_are_kept(video_clip, edited):
    output, summary = edited
    source, result = probe(video_clip), probe(output)
    assert (result.width, result.height) == (source.width, source.height) == (1920, 1080)
    assert result.frames == source.frames == summary.frames == 105
    assert result.fps == source.fps
    assert abs(result.duration - source.duration) < 1 / float(source.fps)
    assert result.codec == "h264"
    assert audio_packets(output) == audio_packets(video_clip)
    assert np.array_equal(all_frames(output)[1], all_frames(video_clip)[1]), "every frame keeps its timestamp"
    assert set(summary.stage_seconds) == set(STAGES)


def test_faces_are_edited_and_the_rest_stays_local(video_clip, edited):
    output, summary = edited
    assert summary.faces_edited > 0 and len(summary.faces_per_frame) == 105
    before, _ = all_frames(video_clip)
    after, _ = all_frames(output)
    with_faces = [i for i, count in enumerate(summary.faces_per_frame) if count > 0]
    changed = np.abs(after[with_faces].astype(np.int16) - before[with_faces]).max(axis=-1) > 30
    assert changed.any(axis=(1, 2)).mean() > 0.9, "edited faces show in (nearly) every frame with a face"
    assert changed.mean() < 0.01, "away from the faces nothing changes beyond codec noise"


@pytest.fixture(scope="module")
def mixed_clip(tmp_path_factory, video_clip) -> tuple[Path, list[bool]]:
    """Twelve frames of the real clip; the middle four replaced by its face-free upper half (the
    arch and the sign above the people), so the clip has frames with and without faces."""
    from exaug.io.video import VideoWriter, read_frames

    path = tmp_path_factory.mktemp("mixed") / "mixed.mp4"
    chunk = next(read_frames(video_clip, chunk_size=12))
    frames = chunk.frames.copy()
    faceless = [4 <= i < 8 for i in range(12)]
    for i in range(4, 8):
        upper = frames[i, :480, 480:1440]  # 960x480 of architecture, no people
        frames[i] = np.asarray(Image.fromarray(upper).resize((1920, 1080), Image.Resampling.BICUBIC))
    with VideoWriter(path, probe(video_clip), crf=12, preset="veryfast") as writer:
        writer.write(frames, chunk.pts)
    return path, faceless


def test_frames_and_chunks_without_faces_pass_unchanged(mixed_clip, test_checkpoint, tmp_path):
    clip, faceless = mixed_clip
    output = tmp_path / "out.mp4"
    generator = ExpressionGenerator.load(test_checkpoint, "cpu")
    # chunks of four: frames 4-7, the faceless ones, are a chunk with no face to render
    summary = edit_video(clip, output, generator, VideoOptions(emotion="surprise", preset="veryfast", chunk_size=4),
                         show_progress=False)
    assert [count == 0 for count in summary.faces_per_frame] == faceless
    before, after = all_frames(clip)[0], all_frames(output)[0]
    for index, empty in enumerate(faceless):
        quality = psnr(after[index], before[index])
        assert quality > 40.0 if empty else quality < 60.0, (index, quality)


def test_side_by_side_review(tmp_path, mixed_clip, test_checkpoint):
    clip, _ = mixed_clip
    output = tmp_path / "review.mp4"
    generator = ExpressionGenerator.load(test_checkpoint, "cpu")
    edit_video(clip, output, generator, VideoOptions(emotion="sad", side_by_side=True, preset="veryfast"),
               show_progress=False)
    result = probe(output)
    assert (result.width, result.height, result.frames) == (2 * 1920, 1080, 12)
    left = all_frames(output)[0][:, :, :1920]
    assert psnr(left, all_frames(clip)[0]) > 38.0, "the left half is the input"


@pytest.mark.parametrize("content, reason", [(b"", "empty file (0 bytes)"),
                                             (b"this is a text file, not a video", "not a readable video file")])
def test_bad_inputs_are_clear_errors(tmp_path, test_checkpoint, content, reason):
    bad = tmp_path / "clip.mp4"
    bad.write_bytes(content)
    result = subprocess.run([sys.executable, "-m", "exaug", "video", str(bad), "-o", str(tmp_path / "out.mp4"),
                             "--emotion", "happy", "--model", str(test_checkpoint)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and f"{bad}: {reason}" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out.mp4").exists()


@pytest.fixture(scope="module")
def portrait_clip(tmp_path_factory, people_dir) -> Path:
    """20 frames (0.8 s at 25 fps) of a camera drifting over a real portrait: one face, 320x240."""
    return photo_clip(tmp_path_factory.mktemp("portrait") / "portrait.mp4",
                      [Shot(people_dir / "angelina_jolie" / "1.jpg", 20, (0.1, 0.05, 0.85), (0.15, 0.1, 0.75))])


def test_preview_shows_the_edited_face_before_and_after_at_moments_of_the_clip(portrait_clip, test_checkpoint,
                                                                                tmp_path):
    """Two rows (frames 5 and 15 of 20): the face as it came in and as it went out, cut from the
    frames, the two differing; a clip whose faces are never edited writes no sheet; a sheet that
    could not be one is refused before the work."""
    generator = ExpressionGenerator.load(test_checkpoint, "cpu")
    sheet = tmp_path / "sheet.png"
    options = VideoOptions(emotion="surprise", preset="veryfast", preview=sheet, preview_rows=2)
    summary = edit_video(portrait_clip, tmp_path / "out.mp4", generator, options, show_progress=False)
    assert summary.preview == sheet
    picture = np.asarray(Image.open(sheet).convert("RGB")).astype(int)
    assert picture.shape == (16 + 2 * (256 + 16), 2 * 256, 3)
    for row in range(2):
        top = 16 + row * (256 + 16)
        before, after = picture[top:top + 256, :256], picture[top:top + 256, 256:]
        assert before.std() > 20  # a face, not an empty crop
        assert np.abs(before - after).mean() > 1.0  # edited
        assert np.abs(before - after)[:32].mean() < np.abs(before - after)[96:224].mean()  # the face, not its margin

    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (240, 320, 3), np.uint8)).save(noise)
    faceless = photo_clip(tmp_path / "faceless.mp4", [Shot(noise, 6, (0.0, 0.0, 1.0))])
    quiet = edit_video(faceless, tmp_path / "quiet.mp4", generator, replace(options, preview=tmp_path / "none.png"),
                       show_progress=False)
    assert quiet.preview is None and not (tmp_path / "none.png").exists()

    with pytest.raises(ExaugError, match="the preview is a PNG"):
        edit_video(portrait_clip, tmp_path / "never.mp4", generator, replace(options, preview=tmp_path / "sheet.jpg"),
                   show_progress=False)
    assert not (tmp_path / "never.mp4").exists()


def test_start_end_and_ramp_edit_only_that_span(portrait_clip, test_checkpoint, tmp_path):
    """Frames 5-14 are edited (0.2 s to 0.6 s) easing over 0.12 s; the rest equals a plain transcode."""
    generator = ExpressionGenerator.load(test_checkpoint, "cpu")
    output, plain = tmp_path / "span.mp4", tmp_path / "plain.mp4"
    options = VideoOptions(emotion="happy", preset="veryfast", chunk_size=8, span=TimeSpan(0.2, 0.6, 0.12))
    summary = edit_video(portrait_clip, output, generator, options, show_progress=False)
    frames, pts = all_frames(portrait_clip)
    with VideoWriter(plain, probe(portrait_clip), crf=options.crf, preset=options.preset) as writer:
        writer.write(frames, pts)
    edited, transcoded = all_frames(output)[0], all_frames(plain)[0]
    change = [float(np.abs(a.astype(np.int16) - b).mean()) for a, b in zip(edited, transcoded)]
    assert [count > 0 for count in summary.faces_per_frame] == [5 < i < 15 for i in range(20)], "weight 0 at 0.2 s"
    for index in range(20):
        codec_loss = psnr(transcoded[index], frames[index])  # about 39.5 dB at crf 18
        quality = psnr(edited[index], frames[index])
        if not 5 <= index < 15:  # as close to the input as a plain transcode is, and to that transcode
            assert quality > codec_loss - 1.0 and psnr(edited[index], transcoded[index]) > 38.0, (index, quality)
        elif 7 <= index <= 12:
            assert quality < codec_loss - 8.0, (index, quality)
    assert change[6] < change[9] and change[13] < change[10], "the edit eases in and out"


def test_frames_after_the_span_are_written_as_they_come(portrait_clip, test_checkpoint, tmp_path, monkeypatch):
    """Rendering waits until no face found later can be followed back into a frame; past --end no
    frame is followed, so the frames before are settled there and the rest stream through, instead
    of waiting (all of a long clip in memory) for the clip's end."""
    import exaug.pipelines.video as video

    decoded: list[int] = []
    written_after: list[int] = []
    read_frames = video.read_frames

    def counted(path, chunk_size):
        for chunk in read_frames(path, chunk_size):
            decoded.append(len(chunk))
            yield chunk

    class Writer(VideoWriter):
        def write(self, frames, pts):
            written_after.append(sum(decoded))
            return super().write(frames, pts)

    monkeypatch.setattr(video, "read_frames", counted)
    monkeypatch.setattr(video, "VideoWriter", Writer)
    generator = ExpressionGenerator.load(test_checkpoint, "cpu")
    options = VideoOptions(emotion="happy", preset="veryfast", chunk_size=1, span=TimeSpan(None, 0.2))
    summary = edit_video(portrait_clip, tmp_path / "early.mp4", generator, options, show_progress=False)
    assert summary.frames == 20 and sum(count > 0 for count in summary.faces_per_frame) == 5
    assert written_after[0] < 15, written_after  # not all 20 frames decoded before the first is written


def test_the_last_chunks_are_edited_two_at_a_time_and_written_in_order(portrait_clip, test_checkpoint, tmp_path,
                                                                      monkeypatch):
    """The chunks that wait for following's end (the last ``follow_back`` frames) are edited two at a
    time, one of each pair on a helper thread, and written in order: the video is, frame for frame,
    the one a single thread writes."""
    import concurrent.futures
    import threading

    import exaug.pipelines.video as video
    from exaug.pipelines.video_faces import FaceEditor

    threads: list[str] = []
    edit = FaceEditor.edit

    def recorded(self, *args):
        threads.append(threading.current_thread().name)
        return edit(self, *args)

    monkeypatch.setattr(FaceEditor, "edit", recorded)
    generator = ExpressionGenerator.load(test_checkpoint, "cpu")
    options = VideoOptions(emotion="happy", preset="veryfast", chunk_size=1)
    two = edit_video(portrait_clip, tmp_path / "two.mp4", generator, options, show_progress=False)
    assert len(threads) == 20 and sum(name.startswith("exaug-render") for name in threads) == 5, threads

    class InPlace:  # a helper that edits where it is asked to
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def submit(self, function, *args):
            future = concurrent.futures.Future()
            future.set_result(function(*args))
            return future

    monkeypatch.setattr(video, "ThreadPoolExecutor", InPlace)
    one = edit_video(portrait_clip, tmp_path / "one.mp4", generator, options, show_progress=False)
    (frames_two, pts_two), (frames_one, pts_one) = all_frames(two.output), all_frames(one.output)
    assert two.frames == one.frames == 20 and two.faces_per_frame == one.faces_per_frame
    assert np.array_equal(pts_two, pts_one) and np.array_equal(frames_two, frames_one)


@pytest.mark.parametrize("text, seconds",
                         [("12.5", 12.5), ("01:02.5", 62.5), ("00:01:02.5", 62.5), ("1:00:00", 3600.0)])
def test_times_are_seconds_or_timestamps(text, seconds):
    assert parse_time(text, "--start") == seconds


@pytest.mark.parametrize("text", ["soon", "-1", "1:75", "1:60:00", "nan"])
def test_bad_times_are_clear_errors(text):
    with pytest.raises(ExaugError, match="--start: .* is not a time"):
        parse_time(text, "--start")
    with pytest.raises(ExaugError, match="must come after"):
        TimeSpan(2.0, 1.0)


def test_raised_cosine_ramp():
    weights = TimeSpan(1.0, 3.0, 0.5).weights(np.array([0.9, 1.0, 1.25, 1.5, 2.0, 2.75, 3.0, 4.0]))
    assert np.allclose(weights, [0, 0, 0.5, 1, 1, 0.5, 0, 0])
    assert np.allclose(TimeSpan(end=1.0, ramp=0.5).weights(np.array([0.0, 0.75, 1.0])), [1, 0.5, 0]), \
        "no ramp at an end the user did not set"


@pytest.mark.parametrize("times, message", [(["--start", "1:75"], "--start: '1:75' is not a time"),
                                            (["--start", "30"], "past the end of the video")])
def test_bad_spans_are_one_line_errors(video_clip, tmp_path, test_checkpoint, times, message):
    result = subprocess.run([sys.executable, "-m", "exaug", "video", str(video_clip), "-o", str(tmp_path / "out.mp4"),
                             "--emotion", "happy", "--model", str(test_checkpoint), *times],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out.mp4").exists()


def test_the_short_command_writes_the_clip_in_the_expression_in_the_current_folder(tmp_path, test_checkpoint):
    """`exaug video clip.mkv --emotion happy` with no -o writes clip.happy.mkv where the user is (and
    `--like REF`, clip.like-REF.mkv); containers exaug cannot write become .mp4."""
    shots = [Shot(REPO / "examples" / "grace_hopper.jpg", 4, (0.1, 0.05, 0.8))]
    clips = tmp_path / "clips"
    clips.mkdir()
    mkv = photo_clip(clips / "clip.mkv", shots)
    avi = photo_clip(clips / "clip.avi", shots)
    here = tmp_path / "here"
    here.mkdir()
    tiny = ["--model", str(test_checkpoint)]  # --like needs the bundled, geometry-guided model
    for clip, options, written in ((mkv, ["--emotion", "happy", *tiny], "clip.happy.mkv"),
                                   (mkv, ["--like", str(REPO / "examples" / "astronaut.png")], "clip.like-astronaut.mkv"),
                                   (avi, ["--emotion", "sad", *tiny], "clip.sad.mp4")):
        result = subprocess.run([sys.executable, "-m", "exaug", "video", str(clip), *options, "-q", "--preset",
                                 "ultrafast"], cwd=here, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        assert probe(here / written).frames == 4
    assert sorted(path.name for path in clips.iterdir()) == ["clip.avi", "clip.mkv"], "the inputs' folder untouched"


def test_following_beside_rendering_shares_the_cores_and_gives_them_back():
    """edit_video follows the next chunk in a thread while it renders this one, each on half of
    torch's threads, handing the GIL over within 1 ms; however the consumer stops, the process
    gets all of its threads and its own switch interval back."""
    before, interval = torch.get_num_threads(), sys.getswitchinterval()
    seen: list[tuple[str, int, float]] = []

    def follow():
        for chunk in range(3):
            seen.append(("follower", torch.get_num_threads(), sys.getswitchinterval()))
            yield chunk

    with pytest.raises(RuntimeError, match="render failed"):
        for chunk in in_background(follow(), split_cores=True):
            seen.append(("renderer", torch.get_num_threads(), sys.getswitchinterval()))
            if chunk == 1:
                raise RuntimeError("render failed")
    assert {who for who, _, _ in seen} == {"follower", "renderer"}
    assert {threads for _, threads, _ in seen} == {max(1, before // 2)}
    assert {switch for _, _, switch in seen} == {min(interval, SPLIT_SWITCH_INTERVAL)}
    assert torch.get_num_threads() == before
    assert sys.getswitchinterval() == interval
