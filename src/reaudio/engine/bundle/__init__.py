"""The bundle format: its manifest schema, JSON and atomic-file helpers, plan names, the default model."""
