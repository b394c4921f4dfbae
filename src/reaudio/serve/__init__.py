"""``reaudio serve``: a local generation service for sound-design tools (HTTP, step-level batching)."""
