"""The hardware probe: the collection's plugins/module_utils/gpu_probe.py (the deepseek_preflight_facts
module runs it on targets), under this name for the controller. One file, one module object."""

import sys

from deepseek_node._shared import module_utils

sys.modules[__name__] = module_utils("gpu_probe")
