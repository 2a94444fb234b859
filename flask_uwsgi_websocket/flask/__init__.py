"""Flask integration: the extension, WebSocket routes as Flask views, blueprints, the
middleware, and what a handler's end means (``serving``)."""
