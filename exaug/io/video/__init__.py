"""Video in and out with PyAV: metadata, frames in display orientation, H.264 with the audio copied.

The video pipeline edits faces frame by frame and must hand back a file that differs from the
input only in the faces: same frame count, same timestamps (variable frame rate included), same
audio bytes. Hence frames carry their original ``pts`` through the pipeline, the writer encodes
them with the input's time base, and audio packets are remuxed, never decoded.

Every failure a user can cause (missing, non-video, truncated, corrupt file; an output container
that cannot hold the audio) becomes an :class:`~exaug.errors.ExaugError` naming the file and the
reason; raw ``av`` exceptions never escape.

:mod:`.reading` probes and decodes, :mod:`.writer` encodes.
"""

from exaug.io.video.reading import FrameChunk, VideoInfo, probe, read_frames
from exaug.io.video.writer import CONTAINERS, VideoWriter, check_container

__all__ = ["CONTAINERS", "FrameChunk", "VideoInfo", "VideoWriter", "check_container", "probe", "read_frames"]
