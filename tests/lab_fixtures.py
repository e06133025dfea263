"""Lab fixtures (session-scoped real targets)."""
