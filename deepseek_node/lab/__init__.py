"""Throwaway Debian 12 (or 13) target hosts on this machine (systemd-nspawn), for tests and demos.

from deepseek_node.lab import Lab
lab = Lab()  # Lab(suite="trixie") for Debian 13
hosts = lab.up(count=2)
lab.run("dsn1", "systemctl is-system-running")
lab.down()
"""

from deepseek_node.lab.core import HostStatus, Lab, LabHost, check_prerequisites
from deepseek_node.lab.errors import LabError, UnknownHostError

__all__ = ["HostStatus", "Lab", "LabError", "LabHost", "UnknownHostError", "check_prerequisites"]
