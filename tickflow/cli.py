"""``tickflow``: the single command-line entry point."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from tickflow import logs
from tickflow.settings import (
    DEFAULT_BROKER_PORT,
    DEFAULT_REGISTRY_PORT,
    DEFAULT_SIMULATOR_PORT,
    get_settings,
)

app = typer.Typer(help="tickflow: market data from vendor feeds to Avro topics and a Parquet "
                       "lake.", no_args_is_help=True, pretty_exceptions_show_locals=False)
topics_app = typer.Typer(help="Kafka topics.", no_args_is_help=True)
schemas_app = typer.Typer(help="Avro schemas and the registry.", no_args_is_help=True)
connect_app = typer.Typer(help="Source connectors: vendor feeds -> raw topics.",
                          no_args_is_help=True)
flow_app = typer.Typer(help="The normalization dataflow.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
app.add_typer(schemas_app, name="schemas")
app.add_typer(connect_app, name="connect")
app.add_typer(flow_app, name="flow")

console = Console()
err = Console(stderr=True)


@app.callback()
def _main() -> None:
    logs.setup()


@app.command()
def up(
    broker_port: int = DEFAULT_BROKER_PORT,
    registry_port: int = DEFAULT_REGISTRY_PORT,
    simulator_port: int = DEFAULT_SIMULATOR_PORT,
    simulator_arg: Annotated[list[str] | None, typer.Option(
        help="Extra simulator flag, repeatable (e.g. --simulator-arg=--malformed-every=100)")
    ] = None,
) -> None:
    """Start the embedded stack in the background: broker, schema registry, simulator.

    Creates every topic and registers every schema. Stop it with `tickflow down`.
    """
    from infra.stack import EmbeddedStack, read_stack_file, write_stack_file

    state_dir = get_settings().state_dir
    if read_stack_file(state_dir) is not None:
        err.print(f"a stack is already recorded in {state_dir}; run `tickflow down` first")
        raise typer.Exit(1)
    stack = EmbeddedStack(state_dir, broker_port, registry_port, simulator_port,
                          simulator_args=list(simulator_arg or []))
    stack.start()
    info = stack.info()
    write_stack_file(info)
    console.print("[bold green]embedded stack up[/]")
    for k, v in info.env().items():
        console.print(f"  export {k}={v}")
    console.print(f"logs: {state_dir / 'logs'}")


@app.command()
def down() -> None:
    """Stop the stack started by `tickflow up`."""
    from infra.stack import stop_recorded

    stopped = stop_recorded(get_settings().state_dir)
    console.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@topics_app.command("create")
def topics_create(
    raw_partitions: Annotated[int | None, typer.Option(help="Partitions of raw topics")] = None,
    partitions: Annotated[int | None, typer.Option(help="Partitions of output topics")] = None,
) -> None:
    """Create the raw, normalized, health and dead-letter topics (existing ones are kept)."""
    from infra.topics import create_topics, topic_specs

    s = get_settings()
    res = create_topics(s.kafka_config(), topic_specs(raw_partitions or s.raw_partitions,
                                                      partitions or s.normalized_partitions))
    t = Table("topic", "status")
    for name, status in res.items():
        t.add_row(name, status)
    console.print(t)


@schemas_app.command("register")
def schemas_register() -> None:
    """Register every event schema under `<topic>-value` (idempotent)."""
    from schemas.serde import register_all

    ids = register_all(get_settings().registry_config())
    t = Table("subject", "schema id")
    for subject, sid in ids.items():
        t.add_row(subject, str(sid))
    console.print(t)


@schemas_app.command("check")
def schemas_check(
    registry: Annotated[bool, typer.Option(help="Also ask the schema registry")] = False,
) -> None:
    """Refuse a breaking schema change (BACKWARD), against the previous committed version
    and optionally the registry. Exits 1 on any incompatibility."""
    from schemas.check import check_offline, check_registry

    results = check_offline()
    if registry:
        results += check_registry(get_settings().registry_config())
    t = Table("subject", "against", "result")
    bad = 0
    for r in results:
        bad += not r.compatible
        t.add_row(r.subject, r.against,
                  "[green]ok[/]" if r.compatible else "[red]BREAKING[/]: " + "; ".join(r.messages))
    console.print(t)
    if bad:
        raise typer.Exit(1)


@connect_app.command("massive-ws")
def connect_massive_ws(
    market: Annotated[str, typer.Option(help="stocks or options")] = "stocks",
    subscribe: Annotated[str, typer.Option(help="Comma-separated channels, e.g. Q.SPY,T.SPY")
                         ] = "Q.SPY,T.SPY",
    seconds: Annotated[float | None, typer.Option(help="Stop after this long")] = None,
) -> None:
    """Stream a Massive WebSocket feed to its raw topic (key from MASSIVE_API_KEY)."""
    from connectors.massive_ws import WsConfig, run_ws

    s = get_settings()
    if s.massive_api_key is None:
        err.print("MASSIVE_API_KEY is not set")
        raise typer.Exit(2)
    cfg = WsConfig(s.massive_ws_host, market, [c for c in subscribe.split(",") if c],
                   api_key=s.massive_api_key.get_secret_value(), secure=s.massive_ws_secure)
    stats = asyncio.run(run_ws(cfg, s.kafka_config(), seconds))
    console.print(f"frames {stats.frames}, written {stats.written}, dropped {stats.dropped}")


@flow_app.command("run", context_settings={"allow_extra_args": True,
                                           "ignore_unknown_options": True})
def flow_run(
    ctx: typer.Context,
    workers: Annotated[int, typer.Option("-w", "--workers", help="Worker threads")] = 1,
    bounded: Annotated[bool, typer.Option(help="Stop at the end of the raw topics")] = False,
    recovery_dir: Annotated[Path | None, typer.Option(
        help="Bytewax recovery store (created if new): a killed flow resumes from it")] = None,
    snapshot_secs: Annotated[int, typer.Option(help="Seconds between recovery snapshots")
                             ] = 10,
) -> None:
    """Run the normalization dataflow (extra args go to `python -m bytewax.run`)."""
    from flows.runner import flow_argv

    env = {**os.environ, **({"TICKFLOW_TAIL": "0"} if bounded else {})}
    argv = flow_argv(workers, recovery_dir, snapshot_secs, ctx.args)
    os.execve(sys.executable, argv, env)


@app.command()
def demo(
    seconds: Annotated[float, typer.Option(help="How long to stream from the simulator")] = 15,
    workers: Annotated[int, typer.Option(help="Dataflow workers")] = 2,
) -> None:
    """Run the whole pipeline on a fresh embedded stack for a bounded time; print a summary."""
    from tickflow.demo import run_demo

    res = run_demo(seconds, workers, get_settings().state_dir, console)
    empty = [t for t, n in res.topic_counts.items()
             if n == 0 and t.startswith("market.") and ("stocks" in t or "options" in t)]
    if empty:
        err.print(f"[red]no output on {', '.join(empty)}[/]")
        raise typer.Exit(1)


def main() -> None:  # pragma: no cover - console script shim
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
