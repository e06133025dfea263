"""`python -m deepseek_node.daemon --config PATH`: what the systemd unit runs on an inference node."""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    # Air-gapped by design: never let a library reach for the Hub, whatever the environment says.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = argparse.ArgumentParser(prog="python -m deepseek_node.daemon", description=__doc__)
    parser.add_argument("--config", required=True, help="daemon YAML config (rendered by the Ansible role)")
    parser.add_argument(
        "--log-level",
        default=os.environ.get("DEEPSEEK_NODE_LOG_LEVEL", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
    )
    parser.add_argument("--check", action="store_true", help="validate the config and the plan, then exit")
    args = parser.parse_args(argv)

    from deepseek_node.daemon.config import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        from deepseek_node.daemon.runtime import prepare

        try:
            plan = prepare(config)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"config OK: {plan.describe()}")
        return 0
    from deepseek_node.daemon.server import run

    return run(config, log_level=args.log_level)


if __name__ == "__main__":
    sys.exit(main())
