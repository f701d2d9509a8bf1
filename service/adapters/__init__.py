"""Adapters to the outside world, named by technology and role."""
