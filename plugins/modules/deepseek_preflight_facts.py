#!/usr/bin/python
"""The preflight role's hardware probe as a module: the work is module_utils/gpu_probe.py's probe()."""

from __future__ import annotations

from collections.abc import Sequence

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.deepseek.node.plugins.module_utils.gpu_probe import probe

DOCUMENTATION = r"""
module: deepseek_preflight_facts
short_description: Read GPU, NVSwitch, driver, Secure Boot, kernel-header and disk facts; change nothing
description:
  - Reads PCI devices, the loaded NVIDIA driver, NVML (once a driver exists), Secure Boot, kernel headers,
    virtualization and free space, standard library only (it runs before anything is installed).
  - Returns the facts under C(facts).
options:
  hw_root: {type: path, default: /, description: Root under which /sys and /proc are read.}
  kernel: {type: str, description: Kernel release to check headers for (default the running one).}
  models_dir: {type: path, default: /var/lib/deepseek-node/models, description: Where models go (free space).}
  nvml_paths: {type: list, elements: str, default: [], description: Extra sys.path globs to find pynvml.}
  headers_package: {type: str, default: "", description: Package that carries the kernel headers.}
  headers_query: {type: list, elements: str, default: [], description: argv printing that package's candidate.}
  space: {type: list, elements: dict, default: [], description: "[{what, path, bytes}] destinations to measure."}
author: deepseek-node
"""

EXAMPLES = r"""
- name: Probe the hardware
  deepseek.node.deepseek_preflight_facts:
    kernel: "{{ ansible_facts['kernel'] }}"
  register: preflight_probe
"""

RETURN = r"""
facts: {type: dict, returned: always, description: The probe (module_utils/gpu_probe.py's probe()).}
"""


def main() -> None:  # pragma: no cover - exercised through Ansible (collection tests, lab)
    module = AnsibleModule(
        argument_spec={
            "hw_root": {"type": "path", "default": "/"},
            "kernel": {"type": "str", "default": None},
            "models_dir": {"type": "path", "default": "/var/lib/deepseek-node/models"},
            "nvml_paths": {"type": "list", "elements": "str", "default": []},
            "headers_package": {"type": "str", "default": ""},
            "headers_query": {"type": "list", "elements": "str", "default": []},
            "space": {"type": "list", "elements": "dict", "default": []},
        },
        supports_check_mode=True,
    )
    p = module.params

    def run(argv: Sequence[str]) -> tuple[int, str, str]:
        if module.get_bin_path(argv[0]) is None:
            return 127, "", f"{argv[0]} not found"
        rc, out, err = module.run_command(list(argv), environ_update={"LC_ALL": "C"})
        return rc, out, err

    facts = probe(
        hw_root=p["hw_root"],
        kernel=p["kernel"],
        models_dir=p["models_dir"],
        nvml_paths=p["nvml_paths"],
        headers_package=p["headers_package"],
        headers_query=p["headers_query"],
        run=run,
        space=p["space"],
    )
    module.exit_json(changed=False, facts=facts)


if __name__ == "__main__":
    main()
