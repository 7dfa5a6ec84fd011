"""The instance metadata service's pure core: tokens, the metadata tree, the request rules.

Nothing in this package opens a socket, reads a clock or touches the reactor. Callers pass
``now`` (POSIX seconds, as ``IReactorTime.seconds()`` gives it) and data, and get decisions back.
"""
