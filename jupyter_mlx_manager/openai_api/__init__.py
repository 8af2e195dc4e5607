"""The OpenAI-compatible API: request validation, the completion service, response shapes."""
