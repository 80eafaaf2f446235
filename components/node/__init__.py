"""The node side: every k3s node trusts the registry, resolves its name and pulls from it."""
