"""The Manhattan world-modelling task (random walks on a hidden city grid)."""
