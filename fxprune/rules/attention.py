"""attention op rules (filled in by issue 5)."""
