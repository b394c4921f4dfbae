"""PyTorch models of the Re-AudioLDM family and their configurations."""
