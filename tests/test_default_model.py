"""The bundled model: shipped inside the package, small, loaded when no --model is given."""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import numpy as np
import torch

from conftest import REPO
from exaug.io.video import probe
from exaug.model.default import DEFAULT_MODEL, model_path
from exaug.model.generator import ExpressionGenerator
from videotools import audio_packets


def _exaug(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "exaug", *args], capture_output=True, text=True, timeout=900)


def test_bundled_model_is_small_half_precision_and_says_what_it_was_trained_on():
    assert model_path(None) == DEFAULT_MODEL and DEFAULT_MODEL.stat().st_size <= 25 * 2**20
    payload = torch.load(DEFAULT_MODEL, map_location="cpu", weights_only=True)
    meta = json.loads(payload["meta"])
    assert meta["arch"] == "guided" and meta["dtype"] == "float16"
    assert all(t.dtype == torch.float16 for t in payload["painter"].values() if t.is_floating_point())
    assert meta["template"] == "exaug" and meta["expressions"][0] == "neutral" and meta["channels"] == 1
    assert "non-commercial" in meta["licence"] and meta["steps"] > 0
    assert len(meta["data"]["validation"]["held_out_subjects"]) >= 20
    generator = ExpressionGenerator.load(DEFAULT_MODEL, "cpu")
    assert generator.image_size == meta["image_size"] == 128


def test_augment_examples_with_no_model(tmp_path):
    output = tmp_path / "out.h5"
    result = _exaug("augment", str(REPO / "examples"), "--all-emotions", "-o", str(output), "-q")
    assert result.returncode == 0, result.stderr
    with h5py.File(output) as h5:
        assert h5["images"].shape[0] == 2 * 9  # two portraits, each original + eight expressions
        assert h5.attrs["model_hash"]
        images = h5["images"][()].reshape(2, 9, *h5["images"].shape[1:]).astype(np.int16)
    # a luma model on colour photos: the colour survives (no grey faces)
    assert np.abs(images[..., 0] - images[..., 2]).mean() > 5


def test_video_with_no_model_keeps_frames_and_audio(tmp_path, video_clip):
    output = tmp_path / "happy.mp4"
    result = _exaug("video", str(video_clip), "-o", str(output), "--emotion", "happy", "--preset", "veryfast", "-q")
    assert result.returncode == 0, result.stderr
    source, edited = probe(video_clip), probe(output)
    assert (edited.frames, edited.fps, edited.width, edited.height) == (source.frames, source.fps, source.width, source.height)
    assert audio_packets(output) == audio_packets(video_clip)
