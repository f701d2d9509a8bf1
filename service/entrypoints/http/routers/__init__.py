"""One router per concern; ``app.build_http_app`` decides which ones a process serves."""
