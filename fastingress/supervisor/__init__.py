"""The supervisor: loads configuration, publishes snapshots, runs workers, serves the admin port."""

from fastingress.supervisor.core import Supervisor, run_standalone

__all__ = ["Supervisor", "run_standalone"]
