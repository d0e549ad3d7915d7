"""Library code of the MAI depth pipeline: importable, no side effects at import time."""
