#!/usr/bin/python3
"""Test-only module: make a host's ansible_facts those recorded on another system (a JSON file)."""

from __future__ import annotations

import json

from ansible.module_utils.basic import AnsibleModule


def main() -> None:
    module = AnsibleModule(
        argument_spec={"path": {"type": "path", "required": True}}, supports_check_mode=True
    )
    with open(module.params["path"]) as fh:
        facts = json.load(fh)
    module.exit_json(changed=False, ansible_facts=facts)


if __name__ == "__main__":
    main()
