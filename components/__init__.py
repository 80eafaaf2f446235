"""Building blocks of the k3s-registry program, one concern per module."""
