"""Packaging that pyproject.toml cannot say: the Ansible collection's module_utils ship inside the package.

plugins/module_utils holds target-side code the controller imports too (see deepseek_node/_shared.py). It is
mapped in as deepseek_node._module_utils, so a wheel or an editable install carries the collection's own
files rather than a copy.
"""

from setuptools import find_namespace_packages, setup

setup(
    packages=[*find_namespace_packages(include=["deepseek_node*"]), "deepseek_node._module_utils"],
    package_dir={"deepseek_node._module_utils": "plugins/module_utils"},
)
