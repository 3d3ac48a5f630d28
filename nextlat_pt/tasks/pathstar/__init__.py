"""Path-star planning graphs (Bachmann & Nagarajan)."""
