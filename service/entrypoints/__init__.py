"""Entry points (worker, HTTP API, CLI): they translate and delegate, nothing more."""
