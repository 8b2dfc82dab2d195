"""Glue to other libraries (imported on demand, so perfkern does not require them)."""
