"""The offline bundle: everything a target needs, described by a checksummed manifest."""

from deepseek_node.bundle.manifest import BundleError, VerifyReport, verify_bundle

__all__ = ["BundleError", "VerifyReport", "verify_bundle"]
