"""The cluster side: the registry, its certificates and its Kubernetes objects."""
