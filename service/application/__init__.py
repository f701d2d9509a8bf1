"""Application services: orchestrate the domain and the adapters for one use case each."""
