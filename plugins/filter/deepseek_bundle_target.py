"""deepseek_bundle_mismatch: why the offline bundle does not fit a host ('' when it does)."""

from __future__ import annotations

from typing import Any

from deepseek_node.bundle.target import target_mismatch


def deepseek_bundle_mismatch(manifest: dict[str, Any], facts: dict[str, Any]) -> str:
    return target_mismatch(manifest or {}, facts or {})


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"deepseek_bundle_mismatch": deepseek_bundle_mismatch}
