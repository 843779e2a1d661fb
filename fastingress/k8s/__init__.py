"""Controller mode: the only code that imports the ``kubernetes`` client.

``client`` (API access), ``informer`` (list+watch threads), ``store`` and ``debounce`` (pure),
``leader`` (Lease election), ``status`` and ``events`` (pure helpers), ``controller`` (the
``ConfigSource`` the supervisor runs in controller mode).
"""
