"""medtrans: deep-learning medical image translation that keeps scanner geometry end to end."""

from medtrans.errors import MedtransError

__version__ = "0.1.0"
__all__ = ["MedtransError", "__version__"]
