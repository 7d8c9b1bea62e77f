"""The online app: Ray Serve deployments behind an OpenAI-compatible API."""
