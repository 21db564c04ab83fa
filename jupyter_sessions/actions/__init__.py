"""Actions: one small dataclass per thing a client can ask, and the dataclass of its result."""
