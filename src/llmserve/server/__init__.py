"""The HTTP server: ``create_app`` builds a FastAPI app that owns its engines."""
