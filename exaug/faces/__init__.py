"""The face front end: detect faces, align them to a template, paste edited faces back."""

from exaug.faces.align import AlignedFaces, FaceAligner, Template, get_template
from exaug.faces.detect import DetectionOptions, FaceDetector, ImageFaces

__all__ = ["AlignedFaces", "DetectionOptions", "FaceAligner", "FaceDetector", "ImageFaces", "Template", "get_template"]
