"""nextlat_pt: distributed pretraining with Next-Latent Prediction (NextLat)."""

__version__ = "0.1.0"
