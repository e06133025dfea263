"""`provision plan`: how each inference node will serve its model, and why.

A thin surface over `deepseek_node.planner` (the Ansible filters `deepseek_plan` and `deepseek_vllm_args`
are the other one): read the inventory through `ansible-inventory`, validate it, plan every host, print a
table or JSON, with the engine and, for vLLM, the command line that serves the plan.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from deepseek_node.cli.errors import fail
from deepseek_node.planner import (
    HARDWARE_PROFILES,
    MODELS,
    Candidate,
    Engine,
    EngineUnavailableError,
    Fit,
    Goal,
    HardwareProfile,
    Plan,
    PlannerInputError,
    PlanRequest,
    candidates,
    engine_args,
    plan,
    resolve_model,
    resolve_profile,
)
from deepseek_node.planner.group import GroupPlan, GroupRequest, plan_group
from deepseek_node.serving_groups import ServingGroup, find_serving_groups

# The preview's model path and port: the role's default models directory and vLLM's own default port (the
# role renders the real ones through the `deepseek_vllm_args` filter).
PREVIEW_MODELS_DIR = "/var/lib/deepseek-node/models"
PREVIEW_VLLM_PORT = 8000


def _console() -> Console:
    """Rich wraps at 80 columns when not on a terminal; a plan piped to a file should keep its rows whole."""
    probe = Console()
    return probe if probe.is_terminal else Console(width=200)


_FIT_STYLE = {Fit.COMPATIBLE: "green", Fit.LOW_MEMORY: "yellow", Fit.INCOMPATIBLE: "red"}


def register(app: typer.Typer) -> None:
    app.command("plan")(plan_command)


def plan_command(
    inventory: Path | None = typer.Option(
        None, "--inventory", "-i", help="Ansible inventory (hosts.yml or its directory)."
    ),
    model: str | None = typer.Option(
        None, "--model", "-m", help="Catalog model for every host (see --list-models)."
    ),
    model_dir: Path | None = typer.Option(
        None, "--model-dir", help="A local model directory with config.json."
    ),
    hardware: str | None = typer.Option(
        None, "--hardware", help="Plan for a catalog hardware profile instead of an inventory."
    ),
    goal: Goal | None = typer.Option(None, "--goal", help="Override deepseek_serving_goal."),
    engine: Engine | None = typer.Option(
        None,
        "--engine",
        help="Override deepseek_engine: auto (vLLM where it runs), vllm or builtin.",
    ),
    max_context: int | None = typer.Option(
        None, "--max-context", min=1, help="Override deepseek_max_context."
    ),
    group: str = typer.Option(
        "inference_nodes", "--group", help="Inventory group holding the inference nodes."
    ),
    servers: int | None = typer.Option(
        None,
        "--servers",
        min=2,
        help="With --hardware: plan a serving group of this many servers (vLLM multi-node).",
    ),
    list_profiles: bool = typer.Option(
        False, "--list-profiles", help="List every candidate (precision x TP x PP) per hardware profile."
    ),
    list_hardware: bool = typer.Option(False, "--list-hardware", help="List the built-in hardware profiles."),
    list_models: bool = typer.Option(False, "--list-models", help="List the model catalog."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Plan precision, tensor/pipeline parallelism, context and concurrency per host, with reasons.

    Exit status: 0 every host has a plan, 1 a model does not fit its host (the output says what would), 2 bad input.
    """
    if list_hardware:
        _print_hardware(as_json)
        return
    if list_models:
        _print_models(as_json)
        return
    if model and model_dir:
        fail("give --model or --model-dir, not both")
    if model_dir is not None and not model_dir.is_dir():
        fail(
            f"--model-dir {model_dir} does not exist or is not a directory: give a local model directory "
            "with config.json (e.g. made by `provision model make-tiny`), or use --model with a catalog name"
        )
    if model or model_dir:
        # The command line's model replaces every host's: a bad one is reported once, in its own words.
        try:
            resolve_model(model, str(model_dir) if model_dir else None)
        except PlannerInputError as exc:
            fail(_cli_words(str(exc)))
    overrides = {"model": model, "model_dir": str(model_dir) if model_dir else None}
    if servers is not None and not hardware:
        fail(
            "--servers plans a what-if group with --hardware; an inventory's groups come from serving_groups"
        )
    groups: list[tuple[GroupPlan, ServingGroup | None]] = []
    try:
        if list_profiles:
            _list_profiles(overrides, hardware, goal, max_context, engine or Engine.AUTO, as_json)
            return
        if hardware and servers:
            plans = []
            groups = [(_plan_hardware_group(hardware, servers, overrides, goal, max_context, engine), None)]
        elif hardware:
            plans = [_plan_hardware(hardware, overrides, goal, max_context, engine)]
        elif inventory:
            plans, groups = _plan_inventory(inventory, group, overrides, goal, max_context, engine)
        else:
            fail(
                "give an inventory with -i INVENTORY, or --hardware PROFILE with --model, or a --list-* option"
            )
    except EngineUnavailableError as exc:
        fail(f"--engine: {exc}")
    if as_json:
        entries = [{**p.to_dict(), "vllm": _vllm_preview(p)} for p in plans]
        entries += [entry for g, sg in groups for entry in _group_entries(g, sg)]
        typer.echo(json.dumps(entries, indent=2))
    else:
        if plans:
            _print_plans(plans)
        if groups:
            _print_groups(groups)
    if any(not p.fits for p in plans) or any(not g.fits for g, _ in groups):
        raise typer.Exit(1)


def _cli_words(message: str) -> str:
    """Planner messages name inventory keys; without an inventory, name the options that set them."""
    for key, option in (
        ("deepseek_hardware_profile", "--hardware"),
        ("deepseek_model_dir", "--model-dir"),
        ("deepseek_model", "--model"),
    ):
        message = message.replace(key, option)
    return message


def _plan_hardware(
    name: str, overrides: dict[str, Any], goal: Goal | None, max_context: int | None, engine: Engine | None
) -> Plan:
    try:
        profile = resolve_profile(name)
        spec = resolve_model(overrides["model"], overrides["model_dir"])
    except PlannerInputError as exc:
        fail(_cli_words(str(exc)))
    return plan(
        PlanRequest(spec, profile, goal or Goal.THROUGHPUT, max_context, engine=engine or Engine.AUTO)
    )


def _plan_hardware_group(
    name: str,
    servers: int,
    overrides: dict[str, Any],
    goal: Goal | None,
    max_context: int | None,
    engine: Engine | None,
) -> GroupPlan:
    try:
        profile = resolve_profile(name)
        spec = resolve_model(overrides["model"], overrides["model_dir"])
        req = GroupRequest(
            spec, profile, servers, goal or Goal.THROUGHPUT, max_context, engine=engine or Engine.AUTO
        )
        return plan_group(req)
    except PlannerInputError as exc:
        fail(_cli_words(str(exc)))


def _plan_inventory(
    inventory: Path,
    group: str,
    overrides: dict[str, Any],
    goal: Goal | None,
    max_context: int | None,
    engine: Engine | None,
) -> tuple[list[Plan], list[tuple[GroupPlan, ServingGroup | None]]]:
    """Plans of the plain inference nodes, and of each serving group (whose members it replaces)."""
    from deepseek_node.inventory import InventoryError, InventoryLoadError, load_inventory, validate_inventory

    try:
        data = load_inventory(inventory)
    except InventoryLoadError as exc:
        fail(str(exc))
    try:
        settings = validate_inventory(
            data, group, goal=goal, max_context=max_context, engine=engine, **overrides
        )
        serving = find_serving_groups(data, settings, group)
    except InventoryError as exc:
        fail(f"{inventory} is not valid for planning (nothing was changed):\n{exc}")
    members = {h for g in serving for h in g.hosts}
    return [s.plan() for s in settings if s.host not in members], [(g.plan(), g) for g in serving]


def _vllm_preview(p: Plan) -> dict[str, Any] | None:
    """How vLLM would be started for a plan: argv, environment and the checkpoint it needs (None: no vLLM)."""
    if not p.fits or p.engine is not Engine.VLLM:
        return None
    need = engine_args.checkpoint_need(p)
    quant = engine_args.preview_checkpoint(p)
    argv = engine_args.vllm_args(
        p,
        model_path=f"{PREVIEW_MODELS_DIR}/{p.model.name}",
        served_name=p.model.name,
        port=PREVIEW_VLLM_PORT,
        checkpoint_quant=quant,
    )
    return {
        "module": engine_args.VLLM_MODULE,
        "argv": argv,
        "env": engine_args.vllm_env(p),
        "checkpoint": {
            "needs": need.text,
            "formats": [f or "unquantized" for f in need.formats],
            # Set when the checkpoint the plan was made from (catalog or model dir) cannot serve it.
            "problem": engine_args.check_checkpoint(p, p.model.quant_method),
        },
    }


def _rank_commands(g: GroupPlan, sg: ServingGroup | None) -> list[engine_args.RankCommand]:
    """Every rank's vLLM command line; a what-if group gets HEAD_ADDR for the head's address."""
    quant = engine_args.preview_checkpoint(g.plan)
    return engine_args.group_vllm_args(
        g,
        model_path=f"{PREVIEW_MODELS_DIR}/{g.plan.model.name}",
        served_name=g.plan.model.name,
        port=PREVIEW_VLLM_PORT,
        master_addr=sg.master_addr if sg else "HEAD_ADDR",
        master_port=sg.master_port if sg else engine_args.DEFAULT_MASTER_PORT,
        checkpoint_quant=quant,
    )


def _group_entries(g: GroupPlan, sg: ServingGroup | None) -> list[dict[str, Any]]:
    """One JSON entry per member (head first): the group's plan and that member's own command line."""
    base = g.to_dict()
    if not g.fits:
        return [{**base, "host": g.head, "vllm": None}]
    p = g.plan
    need = engine_args.checkpoint_need(p)
    checkpoint = {
        "needs": need.text,
        "formats": [f or "unquantized" for f in need.formats],
        "problem": engine_args.check_checkpoint(p, p.model.quant_method),
    }
    ranks = _rank_commands(g, sg)
    return [
        {
            **base,
            "host": r.host,
            "rank": r.rank,
            "role": r.role,
            "vllm": {"module": r.module, "argv": r.argv, "env": r.env, "checkpoint": checkpoint},
            "ranks": [c.to_dict() for c in ranks],
        }
        for r in ranks
    ]


def _print_groups(groups: list[tuple[GroupPlan, ServingGroup | None]]) -> None:
    console = _console()
    table = Table(title="Serving groups (vLLM multi-node)", title_justify="left")
    for column in ("group", "head", "workers", "profile", "model", "precision", "TP x PP", "max context",
                   "max seqs", "memory/GPU", "network", "fit"):  # fmt: skip
        table.add_column(column, justify="right" if column.startswith(("max", "memory")) else "left")
    for g, _ in groups:
        p = g.plan
        h = g.handoff
        network = f"{p.profile.network_gbps:g} Gb/s"
        if h is not None:
            network += f", {h.hop_seconds * 1000:.1f} ms/hop" + (" [red](too slow)[/]" if h.too_slow else "")
        table.add_row(
            g.name or "-",
            g.head or "-",
            ", ".join(g.workers) or f"{g.servers - 1} more",
            p.profile.label,
            p.model.name,
            p.precision.value if p.precision else "-",
            f"{p.tp} x {p.pp}" if p.fits else "-",
            str(p.max_context) if p.fits else "-",
            str(p.max_running) if p.fits else "-",
            f"{p.expected_gpu_memory_gib:.1f} GiB" if p.memory else "-",
            network,
            f"[{_FIT_STYLE[p.fit]}]{p.fit.value}[/]",
        )
    console.print(table)
    for g, sg in groups:
        console.print(f"\n[bold]{g.summary()}[/]", highlight=False)
        for reason in g.reasons:
            console.print(f"  - {reason}", highlight=False)
        if not g.fits:
            if g.plan.suggestion:
                console.print(f"  [bold]would fit:[/] {g.plan.suggestion}", highlight=False)
            continue
        for r in _rank_commands(g, sg):
            env = [f"{k}={v}" for k, v in r.env.items()]
            program = (
                [engine_args.VLLM_SERVE_LAUNCHER]
                if r.module == engine_args.VLLM_CLI_MODULE
                else ["python", "-m", r.module]
            )
            command = shlex.join(["env", *env, *program, *r.argv])
            console.print(
                f"  [bold]vllm rank {r.rank} ({r.role}, {r.host}):[/] {command}",
                highlight=False,
                soft_wrap=True,
            )
        problem = engine_args.check_checkpoint(g.plan, g.plan.model.quant_method)
        if problem:
            console.print(f"  [bold]checkpoint:[/] {problem}", highlight=False)


def _print_plans(plans: list[Plan]) -> None:
    console = _console()
    table = Table(title="Serving plan", title_justify="left")
    for column in (
        "host",
        "profile",
        "model",
        "engine",
        "precision",
        "TP x PP",
        "max context",
        "max seqs",
        "memory/device",
    ):
        table.add_column(column, justify="right" if column.startswith(("max", "memory")) else "left")
    table.add_column("fit")
    for p in plans:
        memory = f"{p.expected_gpu_memory_gib:.1f} GiB" if p.memory else "-"
        table.add_row(
            p.host or "-",
            p.profile.label,
            p.model.name,
            p.engine.value,
            p.precision.value if p.precision else "-",
            f"{p.tp} x {p.pp}" if p.fits else "-",
            str(p.max_context) if p.fits else "-",
            str(p.max_running) if p.fits else "-",
            memory,
            f"[{_FIT_STYLE[p.fit]}]{p.fit.value}[/]",
        )
    console.print(table)
    for p in plans:
        console.print(f"\n[bold]{p.summary()}[/]", highlight=False)
        for reason in p.reasons:
            console.print(f"  - {reason}", highlight=False)
        if p.suggestion and not p.fits:
            console.print(f"  [bold]would fit:[/] {p.suggestion}", highlight=False)
        vllm = _vllm_preview(p)
        if vllm:
            env = [f"{k}={v}" for k, v in vllm["env"].items()]
            command = shlex.join(["env", *env, "python", "-m", vllm["module"], *vllm["argv"]])
            console.print(f"  [bold]vllm:[/] {command}", highlight=False, soft_wrap=True)
            if vllm["checkpoint"]["problem"]:
                console.print(f"  [bold]checkpoint:[/] {vllm['checkpoint']['problem']}", highlight=False)


def _list_profiles(
    overrides: dict[str, Any],
    hardware: str | None,
    goal: Goal | None,
    max_context: int | None,
    engine: Engine,
    as_json: bool,
) -> None:
    if not (overrides["model"] or overrides["model_dir"]):
        fail("--list-profiles needs --model M or --model-dir DIR")
    try:
        spec = resolve_model(overrides["model"], overrides["model_dir"])
        profiles = [resolve_profile(hardware)] if hardware else list(HARDWARE_PROFILES.values())
    except PlannerInputError as exc:
        fail(_cli_words(str(exc)))
    rows: list[tuple[HardwareProfile, Candidate]] = []
    for profile in profiles:
        req = PlanRequest(spec, profile, goal or Goal.THROUGHPUT, max_context, engine=engine)
        rows += [(profile, c) for c in candidates(req)]
    if as_json:
        payload = [{"hardware": p.name, **c.to_dict()} for p, c in rows]
        typer.echo(json.dumps({"model": spec.to_dict(), "candidates": payload}, indent=2))
        return
    titles = {
        Fit.COMPATIBLE: "Compatible: runs with the required context",
        Fit.LOW_MEMORY: "Compatible but low memory: runs with a shorter context",
        Fit.INCOMPATIBLE: "Incompatible",
    }
    console = _console()
    for fit, title in titles.items():
        table = Table(title=f"{spec.name} - {title}", title_justify="left")
        for column in ("hardware", "candidate", "max context", "max seqs", "memory/device", "why"):
            table.add_column(column, justify="right" if column.startswith(("max", "memory")) else "left")
        for profile, c in rows:
            if c.fit is not fit:
                continue
            memory = (
                f"{c.memory.total / 1024**3:.1f}/{c.memory.usable / 1024**3:.1f} GiB" if c.memory else "-"
            )
            context = str(c.max_context) if fit.fits else "-"
            seqs = str(c.max_running) if fit.fits else "-"
            table.add_row(profile.name, c.name, context, seqs, memory, c.why)
        if table.row_count:
            console.print(table)


def _print_hardware(as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps([p.to_dict() for p in HARDWARE_PROFILES.values()], indent=2))
        return
    console = _console()
    table = Table(title="Hardware profiles (override fields per host with deepseek_hardware_overrides)")
    for column in (
        "name",
        "GPUs",
        "GiB/GPU",
        "cc",
        "bf16",
        "fp8",
        "interconnect",
        "NVLink domain",
        "network Gb/s",
    ):
        table.add_column(column)
    for p in HARDWARE_PROFILES.values():
        gpus = f"{p.gpu_count}x {p.gpu_name}" if p.gpu_count else f"none ({p.host_memory_gib:g} GiB RAM)"
        table.add_row(
            p.name,
            gpus,
            f"{p.gpu_memory_gib:g}" if p.gpu_count else "-",
            p.compute_capability or "-",
            "yes" if p.bf16 else "no",
            "yes" if p.fp8 else "no",
            p.interconnect.value,
            str(p.nvlink_domain) if p.gpu_count else "-",
            f"{p.network_gbps:g}" if p.gpu_count else "-",
        )
    console.print(table)


def _print_models(as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps([m.to_dict() for m in MODELS.values()], indent=2))
        return
    console = _console()
    table = Table(title="Model catalog")
    for column in (
        "name",
        "params",
        "active",
        "attention",
        "KV KiB/token",
        "max context",
        "native",
        "source",
    ):
        table.add_column(column)
    for m in MODELS.values():
        d = m.to_dict()
        table.add_row(
            m.name,
            f"{d['params_b']:.1f}B",
            f"{d['active_params_b']:.1f}B",
            m.attention.value,
            f"{d['kv_cache_bytes_per_token_bf16'] / 1024:.1f}",
            str(m.max_context),
            m.native_precision.value,
            m.source,
        )
    console.print(table)
