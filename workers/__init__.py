"""The data plane: worker processes that accept, parse, route and proxy traffic.

Workers import only ``fastingress.snapshot`` and ``fastingress.errors`` from the
control-plane package: never the Kubernetes client, the translator or the supervisor.
"""
