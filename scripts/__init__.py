"""Command-line entry points (the only code that parses argv)."""
