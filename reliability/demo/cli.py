"""`reliability demo` (run the demo) and `reliability demo inject FAULT [TARGET]`."""

from __future__ import annotations

from pathlib import Path

import click

from reliability.cli_support import BadInput, CommandFailed, console, err_console, finish
from reliability.demo import control

DIR_HELP = "Where the demo keeps its files (config, database, slack.log, demo.json)."


@click.group(invoke_without_command=True)
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("var/demo"),
    show_default=True,
    help=DIR_HELP,
)
@click.option(
    "--listen",
    default="127.0.0.1:9464",
    show_default=True,
    help="HOST:PORT of the daemon's /metrics, /healthz and /readyz.",
)
@click.option(
    "--no-nginx",
    is_flag=True,
    help="Run as if nginx were not installed: switch runbooks are planned, not run.",
)
@click.pass_context
def demo(ctx: click.Context, directory: Path, listen: str, no_nginx: bool) -> None:
    """Run a demo fleet on loopback with the daemon watching it (no GPU, no root, no sshd).

    Three serving nodes in pools blue and green, a standby, nginx in front where it is
    installed, a hosted API, and a Slack stand-in whose messages print here. Cause faults
    from another terminal with `reliability demo inject`. Ctrl-C stops everything.
    """
    if ctx.invoked_subcommand is not None:
        return
    try:
        # Imported here, so a Ctrl-C while the daemon's modules load stops as quietly.
        from reliability.demo.run import DemoError, run

        try:
            code = run(directory, listen, use_nginx=not no_nginx, console=console)
        except DemoError as exc:
            raise BadInput(str(exc)) from None
    except KeyboardInterrupt:
        err_console.print("reliability demo: interrupted while starting; stopped")
        code = 130
    finish(code)


@demo.command()
@click.argument("fault", type=click.Choice(control.FAULTS))
@click.argument("target", required=False)
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The running demo's folder (default: the demo's --dir, var/demo).",
)
@click.pass_context
def inject(ctx: click.Context, fault: str, target: str | None, directory: Path | None) -> None:
    """Cause FAULT in the running demo; TARGET is a node for node-down, gpu-xid79, gpu-hot.

    \b
    upstream-busy      the hosted API answers 503 (upstream-failover)
    node-down [NODE]   a node stops answering, default a node of the active pool
                       (node-failover onto the standby)
    gpu-xid79 [NODE]   XID 79 in the node's kernel log (node-failover)
    gpu-hot [NODE]     a GPU over its slowdown temperature
    bad-image          the active pool's containers get a broken build (blue-green)
    clear              every fault undone (what runbooks changed stays)

    Exit 0 when done, 2 when no demo runs there or the target is wrong.
    """
    parent = ctx.parent.params if ctx.parent else {}
    where = directory or parent.get("directory") or Path("var/demo")
    if target is not None and fault not in control.NODE_FAULTS:
        raise BadInput(f"{fault} takes no target")
    try:
        answer = control.send(where, fault, target)
    except control.NotRunning as exc:
        raise BadInput(
            f"{exc}. Start one with `reliability demo` (or `make run`)"
            + (f" --dir {where}" if directory else "")
        ) from None
    if not answer.get("ok"):
        failure = BadInput if answer.get("usage") else CommandFailed
        raise failure(str(answer.get("error")))
    console.print(answer["message"], markup=False)
