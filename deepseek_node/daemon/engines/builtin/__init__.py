"""The builtin engine: transformers models batched by this package (CPU targets, small models, the lab)."""
