"""pemn: Parameter-Efficient Masking Networks (Bai et al., NeurIPS 2022) as a library."""

from pemn.errors import ArchitectureMismatchError, ConversionError, DatasetError, FormatError, PEMNError

__version__ = "0.1.0"

__all__ = [
    "ArchitectureMismatchError",
    "ConversionError",
    "DatasetError",
    "FormatError",
    "PEMNError",
    "__version__",
]
