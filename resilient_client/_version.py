"""The package version, in one place (the public name is ``resilient_client.__version__``)."""

__version__ = "0.1.0"
