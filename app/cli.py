"""``tickflow``: the single command-line entry point."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar, overload

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
dbn_app = typer.Typer(help="Databento DBN files: generate, publish, replay.",
                      no_args_is_help=True)
backfill_app = typer.Typer(help="Massive REST backfill into the raw log.", no_args_is_help=True)
replay_app = typer.Typer(help="Replay the raw log through the dataflow.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
app.add_typer(schemas_app, name="schemas")
app.add_typer(connect_app, name="connect")
app.add_typer(flow_app, name="flow")
app.add_typer(dbn_app, name="dbn")
app.add_typer(backfill_app, name="backfill")
app.add_typer(replay_app, name="replay")
lake_app = typer.Typer(help="The Parquet lake: integrity checks and compaction.",
                       no_args_is_help=True)
app.add_typer(lake_app, name="lake")

console = Console()
T = TypeVar("T")
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
    broker: Annotated[str, typer.Option(
        help="tansu (pip-only, in memory) or kafka (Apache Kafka, KRaft, data on disk; "
             "needs Java 17 and Maven, the first start downloads it)")] = "tansu",
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
                          simulator_args=list(simulator_arg or []), broker=broker)
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
                   api_key=s.massive_api_key.get_secret_value(), secure=s.massive_ws_secure,
                   spool_path=s.state_dir / "spool" / f"massive-{market}.spool")
    _serve_status()
    stats = asyncio.run(_with_signals(lambda stop: run_ws(cfg, s.kafka_config(), seconds,
                                                           stop=stop)))
    console.print(f"stopped: frames {stats.frames}, written {stats.written}, "
                  f"dropped {stats.dropped}")


check_app = typer.Typer(help="Check a vendor connection, without a broker.",
                        no_args_is_help=True)
app.add_typer(check_app, name="check")


@check_app.command("massive")
def check_massive(
    market: Annotated[str, typer.Option(help="stocks or options")] = "stocks",
    subscribe: Annotated[str, typer.Option(help="Comma-separated channels, e.g. Q.SPY,T.SPY")
                         ] = "Q.SPY,T.SPY",
    messages: Annotated[int, typer.Option(help="Events to parse and print")] = 5,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for them")] = 15.0,
) -> None:
    """Check the API key and the WebSocket (the prototype's test_stream): authenticate,
    subscribe, print a few parsed events and the handshake time, exit. No broker; the key
    is never printed. Exit 1 when the key or a channel is refused or nothing arrives."""
    from websockets.exceptions import WebSocketException

    from connectors.massive_ws import AuthFailed, SubscribeFailed, WsConfig, check_connection

    s = get_settings()
    if s.massive_api_key is None:
        err.print("MASSIVE_API_KEY is not set")
        raise typer.Exit(2)
    cfg = WsConfig(s.massive_ws_host, market, [c for c in subscribe.split(",") if c],
                   api_key=s.massive_api_key.get_secret_value(), secure=s.massive_ws_secure)
    try:
        res = asyncio.run(check_connection(cfg, messages, timeout))
    except (AuthFailed, SubscribeFailed, TimeoutError, OSError, WebSocketException) as exc:
        err.print(f"[red]{type(exc).__name__}: {exc}[/]")
        raise typer.Exit(1) from None
    console.print(f"{res.url}: authenticated and subscribed to {', '.join(res.subscribed)}; "
                  f"handshake {res.handshake_ms:.1f} ms; {res.frames} frames")
    t = Table("type", "symbol", "ts_event_ns", "sequence", "price / bid-ask",
              title=f"first {len(res.events)} events")
    for type_name, ev in res.events:
        px = (f"{ev['price_e9'] / 1e9:g}" if ev.get("price_e9") is not None else
              f"{(ev.get('bid_px_e9') or 0) / 1e9:g} / {(ev.get('ask_px_e9') or 0) / 1e9:g}")
        t.add_row(type_name, ev["symbol"], str(ev["ts_event_ns"]), str(ev.get("sequence")), px)
    console.print(t)


async def _with_signals(start: Callable[[asyncio.Event], Awaitable[T]]) -> T:
    """Run a connector until it ends or Ctrl-C / SIGTERM (docker stop, a Kubernetes rollout)
    stops it the clean way: it writes what it holds and ends its session with a
    ``session_end`` record. Only a kill it cannot catch leaves the session open, and the flow
    reports that as a loss window."""
    from connectors.massive_ws import stop_on_signals

    stop = asyncio.Event()
    stop_on_signals(stop)
    return await start(stop)


def _serve_status() -> None:
    """Long-running commands serve /metrics (and /health) on TICKFLOW_METRICS_PORT, like the
    dataflow: raw records written and lost, spool size, queue depth."""
    port = int(os.environ.get("TICKFLOW_METRICS_PORT", "0"))
    if port:
        from flows.metrics import serve

        serve(port, os.environ.get("TICKFLOW_METRICS_ADDR", "127.0.0.1"))


@connect_app.command("massive-live")
def connect_massive_live(
    underlying: Annotated[str, typer.Option(help="Stock whose options follow its spot")] = "SPY",
    stocks: Annotated[str, typer.Option(help="Stock channels")] = "Q.SPY,T.SPY",
    strikes: Annotated[int, typer.Option(help="Strikes each side of spot")] = 10,
    strike_step: Annotated[float, typer.Option(help="Strike spacing in dollars")] = 1.0,
    expiry: Annotated[list[str] | None, typer.Option(
        help="Expiries YYYY-MM-DD (repeatable); default today (0DTE)")] = None,
    seconds: Annotated[float | None, typer.Option(help="Stop after this long")] = None,
) -> None:
    """Stocks and options connections together; option subscriptions stay within +/- N
    strikes of spot, changed live as spot moves."""
    import datetime as dt

    from connectors.massive_ws import WsConfig
    from connectors.strikes_live import run_live
    from tickflow.strikes import StrikeManager

    s = get_settings()
    if s.massive_api_key is None:
        err.print("MASSIVE_API_KEY is not set")
        raise typer.Exit(2)
    key = s.massive_api_key.get_secret_value()
    days = [dt.date.fromisoformat(d) for d in expiry] if expiry else [
        dt.datetime.now(dt.UTC).date()]
    manager = StrikeManager(underlying, days, strikes, round(strike_step * 1_000_000_000))
    spool = s.state_dir / "spool"
    stk = WsConfig(s.massive_ws_host, "stocks", [c for c in stocks.split(",") if c], api_key=key,
                   secure=s.massive_ws_secure, spool_path=spool / "massive-stocks.spool")
    opt = WsConfig(s.massive_ws_host, "options", [], api_key=key, secure=s.massive_ws_secure,
                   spool_path=spool / "massive-options.spool")
    _serve_status()
    st, ot = asyncio.run(_with_signals(lambda stop: run_live(stk, opt, manager,
                                                              s.kafka_config(), seconds,
                                                              stop=stop)))
    console.print(f"stocks: {st.frames} frames, options: {ot.frames} frames, "
                  f"{len(manager.current)} option channels at the end")


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


@dbn_app.command("generate")
def dbn_generate(
    out: Annotated[Path, typer.Option(help="Directory (Databento download layout)")] = Path(
        "data/dbn"),
    date: Annotated[str, typer.Option(help="Trading date, YYYY-MM-DD")] = "2025-11-13",
    trades: Annotated[int, typer.Option(help="Trade records")] = 20_000,
    mbp10: Annotated[int, typer.Option(help="MBP-10 records")] = 100_000,
    seed: int = 7,
) -> None:
    """Write a synthetic, seeded day of ES trades and MBP-10 as .dbn.zst files."""
    import datetime as dt

    from infra.dbn_generator import generate_day

    g = generate_day(out, dt.date.fromisoformat(date), seed, trades, mbp10)
    console.print(f"wrote {g.trades} ({g.n_trades} records) and {g.mbp10} ({g.n_mbp10})")


TIME_FORMS = "ISO 8601 with a zone (2025-11-13T15:30:00Z), a date (its 00:00 UTC) or UTC ns"


@overload
def _time_ns(value: str, option: str = ...) -> int: ...
@overload
def _time_ns(value: None, option: str = ...) -> None: ...
def _time_ns(value: str | None, option: str = "--start") -> int | None:
    """A time option's value in UTC ns (tickflow.times: the same forms on every command)."""
    from tickflow.times import BadTime, parse_time_ns

    if value is None:
        return None
    try:
        return parse_time_ns(value)
    except BadTime as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from None


@contextlib.contextmanager
def _progress(label: str, total: float | None = None
              ) -> Iterator[Callable[[float, str], None]]:
    """Progress of long work; yields ``update(completed, description)``. On a terminal a
    transient display (with a ``total``: a bar and the time remaining); otherwise (a
    container, a pipe) a structured progress line every PROGRESS_EVERY_S and one at the end,
    whatever the log level, so a log shows the work moving."""
    import time

    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    columns = ((TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn())
               if total else ())
    interactive = console.is_terminal
    last = _Seen(time.monotonic())
    with Progress(*columns, console=console, transient=True,
                  disable=not interactive) as progress:
        task = progress.add_task(label, total=total)

        def update(completed: float, description: str) -> None:
            progress.update(task, completed=completed, description=description)
            last.description, last.completed = description, completed
            if not interactive and time.monotonic() - last.at >= PROGRESS_EVERY_S:
                last.at = time.monotonic()
                _progress_line(label, description, completed, total)

        yield update
    if not interactive and last.description:
        _progress_line(label, last.description, last.completed, total, done=True)


PROGRESS_EVERY_S = 10.0


@dataclass
class _Seen:
    """The last progress reported, and when a line was last logged."""

    at: float
    description: str = ""
    completed: float = 0.0


def _progress_line(label: str, description: str, completed: float, total: float | None,
                   done: bool = False) -> None:
    import logging

    log = logging.getLogger("tickflow.progress")
    log.setLevel(logging.INFO)  # progress is shown by default; other INFO lines are not
    log.info(description, extra={"work": label, "completed": completed, "total": total,
                                 "done": done})


def _dbn_paths(root: Path, dates: list[str] | None, schemas: list[str]) -> list[Path]:
    from connectors.databento_dbn import as_date, discover_files

    wanted = {as_date(d) for d in dates or []}
    paths = []
    for schema in schemas:
        for f in discover_files(root, schema):
            if not wanted or f.date in wanted:
                paths.append(f.path)
    if not paths:
        err.print(f"no DBN files for dates {sorted(wanted)} under {root}")
        raise typer.Exit(1)
    return paths


@dbn_app.command("publish")
def dbn_publish(
    root: Annotated[Path, typer.Argument(help="Directory with trades/ and MBP-10/")],
    date: Annotated[list[str] | None, typer.Option(help="Only these dates (repeatable)")] = None,
) -> None:
    """Publish DBN files to the raw topic as chunks of original record bytes, in file order."""
    from connectors.databento_dbn import DbnError, publish_file
    from schemas.topics import RAW_DATABENTO

    try:
        for path in _dbn_paths(root, date, ["trades", "mbp-10"]):
            chunks, records = publish_file(path, get_settings().kafka_config(), RAW_DATABENTO)
            console.print(f"{path.name}: {records} records in {chunks} chunks")
    except DbnError as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None


@dbn_app.command("import")
def dbn_import(
    root: Annotated[Path, typer.Argument(help="Directory with trades/ and MBP-10/")],
    date: Annotated[list[str] | None, typer.Option(help="Only these dates (repeatable)")] = None,
    trades: Annotated[bool, typer.Option(help="Include trades")] = True,
    mbp10: Annotated[bool, typer.Option(help="Include MBP-10")] = True,
) -> None:
    """Import DBN files straight into the Parquet lake (no broker), columnar."""
    from connectors.databento_dbn import DbnError
    from connectors.dbn_import import import_files

    schemas = [s for s, on in (("trades", trades), ("mbp-10", mbp10)) if on]
    lake_root = get_settings().lake_root
    try:
        paths = _dbn_paths(root, date, schemas)
        with _progress("importing") as update:
            stats = import_files(paths, lake_root, progress=lambda st: update(
                st.records, f"importing: {st.records:,} records, {st.files} of {len(paths)} "
                "files"))
    except DbnError as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    console.print(f"imported {stats.rows:,} rows from {stats.records:,} records of "
                  f"{stats.files} file(s) into {len(stats.files_written)} Parquet file(s) "
                  f"under {lake_root}")
    if stats.rejected:
        err.print("[yellow]rejected: " + ", ".join(
            f"{n:,} {code}" for code, n in sorted(stats.rejected.items()))
            + f" (listed in {lake_root / '_rejects'})[/]")


@dbn_app.command("replay")
def dbn_replay(
    root: Annotated[Path, typer.Argument(help="Directory with trades/ and MBP-10/")],
    speed: Annotated[float | None, typer.Option(
        help="0 = as fast as possible, 1 = real time (the default), N = Nx",
        envvar=["REPLAY_SPEED", "TICKFLOW_REPLAY_SPEED"])] = None,
    date: Annotated[list[str] | None, typer.Option(
        help="Dates in sequence (repeatable); default REPLAY_DATE (comma-separated), else "
        "every date found")] = None,
    trades: Annotated[bool, typer.Option(help="Include trades")] = True,
    mbp10: Annotated[bool, typer.Option(help="Include MBP-10")] = True,
    start: Annotated[str | None, typer.Option(
        "--start", "--start-ns", help=f"Only events at or after: {TIME_FORMS}")] = None,
    end: Annotated[str | None, typer.Option(
        "--end", "--end-ns", help=f"Only events before: {TIME_FORMS}")] = None,
) -> None:
    """Replay DBN files to the raw topic, time-ordered across schemas, at a speed factor."""
    start_ns, end_ns = _time_ns(start, "--start"), _time_ns(end, "--end")
    from connectors.databento_dbn import DbnError
    from connectors.replay import replay_dates_from_env, replay_speed, replay_to_kafka
    from schemas.topics import RAW_DATABENTO

    schemas = [s for s, on in (("trades", trades), ("mbp-10", mbp10)) if on]
    speed = replay_speed(speed)
    try:
        date = date or [d.isoformat() for d in replay_dates_from_env() or []] or None
        paths = _dbn_paths(root, date, schemas)
        with _progress("replaying") as update:
            stats = replay_to_kafka(paths, get_settings().kafka_config(), RAW_DATABENTO,
                                    speed, start_ns, end_ns, progress=lambda st: update(
                                        st.events, f"replaying: {st.events:,} events, "
                                        f"{st.events_per_s:,.0f}/s, speed "
                                        f"{st.achieved_speed:.2f}x"))
    except DbnError as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    console.print(f"replayed {stats.events:,} events in {stats.chunks:,} chunks, "
                  f"{stats.wall_s:.1f}s, {stats.events_per_s:,.0f} events/s, achieved speed "
                  f"{stats.achieved_speed:.2f}x (requested {speed or 'max'}), "
                  f"{stats.capped_waits} long waits capped; by schema: "
                  + ", ".join(f"{k} {v:,}" for k, v in sorted(stats.by_schema.items())))


def _run_backfill(requests: list[Any]) -> None:
    from connectors.massive_rest import BackfillError, BackfillStats, backfill

    s = get_settings()
    if s.massive_api_key is None:
        err.print("MASSIVE_API_KEY is not set")
        raise typer.Exit(2)
    with _progress("backfill", total=1.0) as update:
        t0 = time.monotonic()

        def show(st: BackfillStats) -> None:
            rate = st.events / max(1e-9, time.monotonic() - t0)
            update(st.done_fraction, f"backfill: {st.pages} pages, {st.events:,} events, "
                   f"{rate:,.0f} events/s")

        try:
            stats = backfill(requests, s.massive_api_key.get_secret_value(),
                             s.massive_rest_url, s.kafka_config(),
                             s.state_dir / "backfill-checkpoints.json", progress=show)
        except BackfillError as exc:
            err.print(f"[red]{exc}[/]")
            raise typer.Exit(1) from None
    console.print(f"backfill: {stats.pages} pages, {stats.events:,} events; "
                  f"{stats.skipped_done} request(s) already done")


@backfill_app.command("run")
def backfill_run(
    ticker: Annotated[list[str], typer.Option(help="Ticker (repeatable), e.g. SPY")],
    start: Annotated[str, typer.Option("--start", "--start-ns",
                                       help=f"Window start, inclusive: {TIME_FORMS}")],
    end: Annotated[str, typer.Option("--end", "--end-ns",
                                     help=f"Window end, inclusive: {TIME_FORMS}")],
    quotes: Annotated[bool, typer.Option(help="Backfill quotes")] = True,
    trades: Annotated[bool, typer.Option(help="Backfill trades")] = True,
) -> None:
    """Backfill quotes and trades for tickers and a time range (resumable, idempotent)."""
    from connectors.massive_rest import BackfillRequest

    kinds = [k for k, on in (("quotes", quotes), ("trades", trades)) if on]
    start_ns, end_ns = _time_ns(start, "--start"), _time_ns(end, "--end")
    _run_backfill([BackfillRequest(t, k, start_ns, end_ns) for t in ticker for k in kinds])


@backfill_app.command("gaps")
def backfill_gaps() -> None:
    """Backfill every open gap reported on market.health (each window, plus a margin)."""
    from connectors.massive_rest import gap_fill_requests, open_gaps

    s = get_settings()
    gaps = open_gaps(s.kafka_config(), s.registry_config())
    if not gaps:
        console.print("no open gaps on market.health")
        return
    console.print(f"open gaps: {', '.join(sorted(gaps))}")
    _run_backfill(gap_fill_requests(gaps))


@app.command()
def query(
    event_type: Annotated[str, typer.Argument(help="stock_quote, stock_trade, option_quote, "
                                                   "option_trade, futures_trade, mbp10")],
    symbol: Annotated[list[str] | None, typer.Option(help="Symbols (repeatable)")] = None,
    start: Annotated[str | None, typer.Option(help=f"From, inclusive: {TIME_FORMS}")] = None,
    end: Annotated[str | None, typer.Option(help=f"To, exclusive: {TIME_FORMS}")] = None,
    limit: Annotated[int, typer.Option(help="Rows to print")] = 20,
    out: Annotated[Path | None, typer.Option(help="Write all rows to this .parquet or .csv")
                   ] = None,
) -> None:
    """Read the Parquet lake: one event type, symbols, a time range (partition-pruned)."""
    from connectors.lake_query import query as lake_query

    table = lake_query(get_settings().lake_root, event_type, list(symbol or []) or None,
                       _time_ns(start, "--start"), _time_ns(end, "--end"))
    if out is not None:
        if out.suffix == ".csv":
            import pyarrow.csv as pcsv

            pcsv.write_csv(table, out)
        else:
            import pyarrow.parquet as pq

            pq.write_table(table, out, compression="zstd")
        console.print(f"{table.num_rows} rows -> {out}")
        return
    cols = table.column_names[:10]
    t = Table(*cols, title=f"{event_type}: {table.num_rows} rows (first {limit} shown)")
    for row in table.slice(0, limit).to_pylist():
        t.add_row(*[str(row[c]) for c in cols])
    console.print(t)


@app.command()
def health(
    symbol: Annotated[list[str] | None, typer.Option(help="Only these symbols")] = None,
    recent: Annotated[int, typer.Option(help="Recent transitions to list")] = 10,
    live: Annotated[list[str] | None, typer.Option(
        help="Ask running dataflow processes instead of market.health: their status URL "
             "(http://host:TICKFLOW_METRICS_PORT), repeatable, one per process")] = None,
) -> None:
    """Per-symbol DataHealth now, its open gaps, and the most recent health events (from
    market.health: transitions, and gaps recorded or filled while a symbol was degraded).

    Counts are as of each symbol's last health event; --live reads the running flow's
    state with up-to-date counts.
    """
    import datetime as dt

    if live:
        _live_health(live, set(symbol or []))
        return

    from connectors.massive_rest import health_events

    wanted = set(symbol or [])
    s = get_settings()
    events = health_events(s.kafka_config(), s.registry_config())
    events = [e for e in events if not wanted or e["symbol"] in wanted]
    events.sort(key=lambda e: (e["ts_event_ns"], e["event_id"]))
    from tickflow.health import open_gap_windows

    latest: dict[str, dict[str, Any]] = {}
    since: dict[str, int] = {}
    for e in events:
        latest[e["symbol"]] = e
        if e["from_state"] != e["to_state"] or e["symbol"] not in since:
            since[e["symbol"]] = e["ts_event_ns"]  # the state's start, records aside
    open_by_symbol = open_gap_windows(events)

    def when(ns: int) -> str:
        return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]

    colors = {"HEALTHY": "green", "GAP_DETECTED": "yellow", "CORRUPTED": "red",
              "RECOVERING": "cyan"}
    t = Table("symbol", "state", "since (event time, UTC)", "last reason", "open gaps",
              "gaps", "corrupt", "duplicates", "out of order", title="DataHealth")
    for sym, e in sorted(latest.items()):
        st = e["to_state"]
        t.add_row(sym, f"[{colors.get(st, 'white')}]{st}[/]", when(since[sym]),
                  e["reason_code"], str(len(open_by_symbol.get(sym, []))),
                  str(e["gaps_total"]), str(e["corrupt_total"]),
                  str(e["duplicates_total"]), str(e.get("out_of_order_total", 0)))
    console.print(t if latest else "no DataHealth transitions yet: every symbol is HEALTHY")
    if events:
        r = Table("event time (UTC)", "symbol", "from", "to", "reason",
                  title=f"last {min(recent, len(events))} health events")
        for e in events[-recent:]:
            r.add_row(when(e["ts_event_ns"]), e["symbol"], e["from_state"], e["to_state"],
                      e["reason"][:60])
        console.print(r)


@app.command()
def report(
    out: Annotated[Path, typer.Option(help="PNG file to write")] = Path("tickflow-report.png"),
    symbol: Annotated[list[str] | None, typer.Option(
        help="Only these symbols (default: every symbol with transitions or lake rows, "
             "busiest first, up to --max-symbols)")] = None,
    max_symbols: Annotated[int, typer.Option(help="Rows in the report at most")] = 12,
) -> None:
    """A PNG per-symbol report: DataHealth over time (from market.health) and the latency
    distribution with p50/p99 (from the lake). Open it in any image viewer."""
    import numpy as np
    import pyarrow.compute as pc

    from app.report import render
    from connectors.lake_query import query as lake_query
    from connectors.topicstats import read_all
    from schemas.model import DATA_HEALTH, MARKET_EVENTS
    from schemas.serde import decode
    from schemas.topics import HEALTH

    s = get_settings()
    wanted = list(symbol or []) or None
    transitions = [decode(DATA_HEALTH, m.value() or b"")
                   for m in read_all(s.kafka_config(), HEALTH)]
    transitions = [t for t in transitions if wanted is None or t["symbol"] in wanted]
    lat: dict[str, list[np.ndarray]] = {}
    times = [tr["ts_event_ns"] for tr in transitions]  # the report's time range
    for et in MARKET_EVENTS:
        t = lake_query(s.lake_root, et.name, wanted,
                       columns=["symbol", "ts_event_ns", "latency_ns"])
        if not t.num_rows:
            continue
        times += [pc.min(t["ts_event_ns"]).as_py(), pc.max(t["ts_event_ns"]).as_py()]
        syms = t["symbol"].to_numpy(zero_copy_only=False)
        vals = t["latency_ns"].to_numpy()
        for sym in np.unique(syms):
            lat.setdefault(str(sym), []).append(vals[syms == sym])
    latencies = {k: np.concatenate(v) for k, v in lat.items()}
    if not times:
        err.print("[red]nothing to report: no transitions on market.health, no lake rows[/]")
        raise typer.Exit(1)
    busy = sorted(set(latencies) | {t["symbol"] for t in transitions},
                  key=lambda k: (-len(latencies.get(k, ())), k))
    chosen = wanted or busy[:max_symbols]
    lo, hi = min(times), max(times)
    render(out, transitions, latencies, lo, max(hi, lo + 1), symbols=chosen)
    console.print(f"report: {len(chosen)} symbols -> {out}")


@lake_app.command("compact")
def lake_compact_cmd(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the merges, do nothing")
                       ] = False,
    include_newest: Annotated[bool, typer.Option(
        "--include-newest", help="Also each raw partition's newest bucket (only once no "
        "flow writes this lake)")] = False,
) -> None:
    """Merge small files of each partition, only where the writer could have written one
    file (same raw partition and offset bucket), keeping the first file's name; rows never
    change. The newest bucket of each raw partition is left to the flow unless asked. Safe to
    rerun; `tickflow lake verify` checks the result."""
    from connectors.lake_compact import merge, plan

    s = get_settings()
    merges = plan(s.lake_root, s.lake_bucket_records, include_newest)
    if dry_run or not merges:
        t = Table("partition", "files", "into", title=f"{len(merges)} merges planned")
        for m in merges:
            t.add_row(str(m.folder.relative_to(s.lake_root)), str(len(m.files)), m.files[0].name)
        console.print(t)
        return
    with _progress("compacting", total=len(merges)) as update:
        rows = 0
        for i, m in enumerate(merges, start=1):
            rows += merge(m)
            update(i, f"compacting: {i} of {len(merges)} merges")
    console.print(f"merged {sum(len(m.files) for m in merges)} files into {len(merges)} "
                  f"({rows:,} rows)")


@lake_app.command("migrate")
def lake_migrate_cmd() -> None:
    """Convert a lake written by an older tickflow (layout 1: the symbol inside the files as
    well as in the folders) to the current layout, in place: names, rows and provenance are
    kept; each file is checked first and a damaged one is left as it is and reported. Safe to
    rerun. Stop the flow first."""
    from connectors.lake_migrate import migrate

    root = get_settings().lake_root
    if not root.exists():
        err.print(f"[red]no lake at {root} (TICKFLOW_LAKE_ROOT)[/]")
        raise typer.Exit(1)
    with _progress("migrating", total=None) as update:
        stats = migrate(root, lambda i, n: update(i, f"migrating: {i} of {n} files"))
    console.print(f"lake {root}: {stats.converted} files converted, {stats.already} already "
                  f"in the current layout, {len(stats.refused)} refused")
    for r in stats.refused:
        err.print(f"[red]refused[/] {r}")
    if stats.refused:
        raise typer.Exit(1)


@lake_app.command("verify")
def lake_verify_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
    show_all: Annotated[bool, typer.Option("--all", help="List sound partitions too")] = False,
) -> None:
    """Check every lake file against its provenance (row count, checksum of its event ids,
    folder, order) and every partition for duplicate event ids; exit 1 on any problem."""
    import json as _json
    from dataclasses import asdict

    from connectors.lake_verify import verify

    root = get_settings().lake_root
    if not root.exists():
        err.print(f"[red]no lake at {root} (TICKFLOW_LAKE_ROOT)[/]")
        raise typer.Exit(1)
    reports = verify(root)
    bad = [r for r in reports if r.problems or r.duplicates]
    if as_json:
        console.print_json(_json.dumps({"root": str(root), "partitions": len(reports),
                                        "unsound": [asdict(r) for r in bad]}))
    else:
        t = Table("event type", "symbol", "date", "files", "rows", "duplicates", "problems",
                  title=f"lake {root}: {len(reports)} partitions, {len(bad)} with problems")
        for r in reports if show_all else bad:
            t.add_row(r.event_type, r.symbol, r.day, str(r.files), f"{r.rows:,}",
                      str(r.duplicates), "\n".join(r.problems) or "ok")
        console.print(t)
    if bad:
        raise typer.Exit(1)


def _live_health(urls: list[str], wanted: set[str]) -> None:
    import httpx

    states: dict[str, dict[str, Any]] = {}
    for url in urls:
        try:
            resp = httpx.get(url.rstrip("/") + "/health", timeout=10)
            resp.raise_for_status()
        except httpx.HTTPError as exc:
            console.print(f"[red]cannot read {url}/health: {exc}[/]")
            raise typer.Exit(1) from None
        states.update(resp.json())
    colors = {"HEALTHY": "green", "GAP_DETECTED": "yellow", "CORRUPTED": "red",
              "RECOVERING": "cyan"}
    t = Table("symbol", "state", "events", "duplicates", "gaps", "open gaps", "corrupt",
              "out of order", title=f"DataHealth now ({len(urls)} process(es))")
    for sym, h in sorted(states.items()):
        if wanted and sym not in wanted:
            continue
        st = h["state"]
        t.add_row(sym, f"[{colors.get(st, 'white')}]{st}[/]", str(h["events_total"]),
                  str(h["duplicates_total"]), str(h["gaps_total"]), str(len(h["open_gaps"])),
                  str(h["corrupt_total"]), str(h["out_of_order_total"]))
    console.print(t)


@replay_app.command("lake")
def replay_lake_cmd(
    event_type: Annotated[list[str], typer.Option(help="e.g. futures_trade, mbp10 (repeatable)")],
    speed: Annotated[float, typer.Option(help="0 = as fast as possible, 1 = real time")] = 0.0,
    symbol: Annotated[list[str] | None, typer.Option(help="Only these symbols")] = None,
    start: Annotated[str | None, typer.Option(
        "--start", "--start-ns", help=f"From this event time: {TIME_FORMS}")] = None,
    end: Annotated[str | None, typer.Option(
        "--end", "--end-ns", help=f"Before this event time: {TIME_FORMS}")] = None,
) -> None:
    """Republish lake rows to the normalized topics (source=REPLAY), time-ordered."""
    start_ns, end_ns = _time_ns(start, "--start"), _time_ns(end, "--end")
    from connectors.replay import replay_lake

    s = get_settings()
    stats = replay_lake(s.lake_root, list(event_type), s.kafka_config(), s.registry_config(),
                        speed, list(symbol or []) or None, start_ns, end_ns)
    console.print(f"replayed {stats.events:,} events in {stats.wall_s:.1f}s, achieved speed "
                  f"{stats.achieved_speed:.2f}x (requested {speed or 'max'})")


@replay_app.command("reset")
def replay_reset(
    topic: Annotated[list[str] | None, typer.Option(help="Raw topic (repeatable); default all")
                     ] = None,
    group: Annotated[str | None, typer.Option(help="Consumer group; default the dataflow's")
                     ] = None,
    to_earliest: Annotated[bool, typer.Option("--to-earliest")] = False,
    to_latest: Annotated[bool, typer.Option("--to-latest")] = False,
    to_datetime: Annotated[str | None, typer.Option(
        "--to-datetime", help=TIME_FORMS)] = None,
    to_offset: Annotated[int | None, typer.Option("--to-offset")] = None,
    shift_by: Annotated[int | None, typer.Option("--shift-by")] = None,
    execute: Annotated[bool, typer.Option("--execute", help="Apply (default: dry run)")
                       ] = False,
    recovery_dir: Annotated[Path | None, typer.Option(
        help="The dataflow's recovery store, discarded on --execute")] = None,
) -> None:
    """Reset the dataflow's consumer group, like kafka-consumer-groups --reset-offsets.

    Prints the plan (dry run) unless --execute. The start is aligned down to the lake's
    file grid; records between it and the requested point rebuild state and lake without
    publishing again. Stop the dataflow first.
    """

    from connectors.offsets import ResetError, execute_reset, plan_reset
    from schemas.topics import RAW_TOPICS

    s = get_settings()
    ts_ms = None
    if to_datetime is not None:
        ts_ms = _time_ns(to_datetime, "--to-datetime") // 1_000_000
    g = group or s.consumer_group
    try:
        rows = plan_reset(s.kafka_config(), g, list(topic or RAW_TOPICS),
                          to_earliest=to_earliest, to_latest=to_latest, to_datetime_ms=ts_ms,
                          to_offset=to_offset, shift_by=shift_by,
                          bucket_records=s.lake_bucket_records)
        t = Table("topic", "partition", "current", "requested", "start (aligned)", "log end",
                  "to reprocess", title=f"reset plan for group {g}")
        for r in rows:
            t.add_row(r.topic, str(r.partition), "-" if r.current is None else str(r.current),
                      str(r.requested), str(r.start), str(r.end), str(r.end - r.start))
        console.print(t)
        if execute:
            execute_reset(s.kafka_config(), g, rows, s.state_dir, recovery_dir)
            console.print("[green]executed[/]: offsets committed, replay floor recorded"
                          + (", recovery store discarded" if recovery_dir else ""))
        else:
            console.print("dry run: nothing changed (add --execute to apply)")
    except ResetError as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None


@app.command()
def demo(
    seconds: Annotated[float, typer.Option(help="How long to stream from the simulator")] = 15,
    workers: Annotated[int, typer.Option(help="Dataflow workers")] = 2,
) -> None:
    """Run the whole pipeline on a fresh embedded stack for a bounded time; print a summary."""
    from app.demo import run_demo
    from schemas.topics import NORMALIZED_TOPICS

    res = run_demo(seconds, workers, get_settings().state_dir, console)
    empty = [t for t in NORMALIZED_TOPICS if res.topic_counts.get(t, 0) == 0]
    if empty:
        err.print(f"[red]no output on {', '.join(empty)}[/]")
        raise typer.Exit(1)


def main() -> None:  # pragma: no cover - console script shim
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
