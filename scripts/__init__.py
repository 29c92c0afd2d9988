"""Command-line entry points (the only code that parses argv); importing the package puts the
Hugging Face libraries offline (``scripts.offline``)."""

from scripts.offline import stay_offline

stay_offline()
