"""The bundle manifest: the collection's plugins/module_utils/bundle_manifest.py (the offline_repo role runs
it as a script on the controller and on targets), under this name for the controller. One file, one module
object."""

import sys

from deepseek_node._shared import module_utils

sys.modules[__name__] = module_utils("bundle_manifest")
