"""Built-in synthetic tasks with a known hidden state."""
