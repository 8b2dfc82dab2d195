"""Errors shared by the dispatch layer and everything below it."""


class BackendUnavailableError(RuntimeError):
    """A backend that was asked for explicitly cannot run this call."""
