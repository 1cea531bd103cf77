"""FastAPI routers that the HTTP API (``producers/api``) mounts; each module is self-contained."""
