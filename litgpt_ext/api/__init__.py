"""HTTP client pieces shared by every command that talks to an OpenAI-compatible endpoint."""
