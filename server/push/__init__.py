"""push layer."""
