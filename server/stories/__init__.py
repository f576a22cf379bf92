"""stories layer."""
