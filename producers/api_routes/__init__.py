"""HTTP routes (FastAPI APIRouters) that the API app mounts."""
