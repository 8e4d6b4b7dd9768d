"""exaug: expression augmentation for face datasets and videos."""

from exaug.errors import ExaugError, ImageLoadError, InputError
from exaug.expressions import EXPRESSIONS, canonical_expression

__version__ = "0.1.0"

__all__ = ["EXPRESSIONS", "ExaugError", "ImageLoadError", "InputError", "canonical_expression", "__version__"]
