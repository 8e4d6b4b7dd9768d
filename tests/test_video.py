"""``exaug video`` on the real 1080p clip: timing and audio kept, faceless frames untouched, faces edited."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from exaug.io.video import probe
from exaug.model.generator import ExpressionGenerator
from exaug.pipelines.video import STAGES, VideoOptions, edit_video
from videotools import all_frames, audio_packets, psnr


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


def test_faces_are_edited_and_the_rest_is_untouched(video_clip, edited):
    output, summary = edited
    assert summary.faces_edited > 0 and len(summary.faces_per_frame) == 105
    before, _ = all_frames(video_clip)
    after, _ = all_frames(output)
    faceless = [i for i, count in enumerate(summary.faces_per_frame) if count == 0]
    for index in faceless:
        assert psnr(after[index], before[index]) > 40.0, f"frame {index} has no face but changed"
    with_faces = [i for i, count in enumerate(summary.faces_per_frame) if count > 0]
    changed = np.abs(after[with_faces].astype(np.int16) - before[with_faces]).max(axis=-1) > 30
    assert changed.any(axis=(1, 2)).mean() > 0.9, "edited faces show in (nearly) every frame with a face"
    # away from faces, frames with faces are as untouched as faceless ones: the edit stays local
    assert changed.mean() < 0.01
    assert faceless or summary.faces_per_frame, "the clip has frames with and without faces"


def test_side_by_side_review(tmp_path, video_clip, test_checkpoint):
    from exaug.io.video import VideoWriter, read_frames

    short = tmp_path / "short.mp4"
    info = probe(video_clip)
    with VideoWriter(short, info, preset="veryfast") as writer:
        chunk = next(read_frames(video_clip, chunk_size=6))
        writer.write(chunk.frames, chunk.pts)
    output = tmp_path / "review.mp4"
    generator = ExpressionGenerator.load(test_checkpoint, "cpu")
    edit_video(short, output, generator, VideoOptions(emotion="sad", side_by_side=True, preset="veryfast"),
               show_progress=False)
    result = probe(output)
    assert (result.width, result.height, result.frames) == (2 * 1920, 1080, 6)
    left = all_frames(output)[0][:, :, :1920]
    assert psnr(left, all_frames(short)[0]) > 38.0, "the left half is the input"


@pytest.mark.parametrize("content, reason", [(b"", "empty"), (b"this is a text file, not a video", "")])
def test_bad_inputs_are_clear_errors(tmp_path, test_checkpoint, content, reason):
    bad = tmp_path / "clip.mp4"
    bad.write_bytes(content)
    result = subprocess.run([sys.executable, "-m", "exaug", "video", str(bad), "-o", str(tmp_path / "out.mp4"),
                             "--emotion", "happy", "--model", str(test_checkpoint)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and str(bad) in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out.mp4").exists()
