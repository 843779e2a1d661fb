"""fastingress: a Kubernetes ingress controller and standalone reverse proxy.

Keep this module import-light: worker processes import ``fastingress.snapshot``
and ``fastingress.errors`` and must not pull in the translator, the supervisor
or the Kubernetes client.
"""

__version__ = "0.1.0"
