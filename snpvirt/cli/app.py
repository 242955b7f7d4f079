"""The `snpvirt` command: root options, command registration, and the one place errors are printed.

Startup imports only typer and snpvirt's light modules; each command imports what it needs
(libvirt, lxml, jinja2) itself, so `snpvirt --help` stays as fast as `import typer`.
"""

from __future__ import annotations

import sys

import typer

from snpvirt import __version__, output
from snpvirt.cli import (host_cmd, import_cmd, inventory_cmd, lifecycle_cmd, measure_cmd, render_cmd, validate_cmd,
                         watch_cmd)
from snpvirt.errors import ExitCode, SnpvirtError

app = typer.Typer(
    name="snpvirt",
    help="AMD SEV-SNP confidential VMs through libvirt: spec -> validated domain XML.",
    epilog="Example: snpvirt render examples/web-01.toml -o web-01.xml && virsh define web-01.xml",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"snpvirt {__version__}\n")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for unexpected errors."),
) -> None:
    """AMD SEV-SNP confidential VMs through libvirt."""


app.command("render", epilog=render_cmd.EPILOG)(render_cmd.render)
app.command("validate", epilog=validate_cmd.EPILOG)(validate_cmd.validate)
app.add_typer(host_cmd.host_app, name="host")
lifecycle_cmd.register(app)
inventory_cmd.register(app)
watch_cmd.register(app)
import_cmd.register(app)
measure_cmd.register(app)


def main(argv: list[str] | None = None) -> None:
    sys.exit(run(sys.argv[1:] if argv is None else argv))


def run(argv: list[str]) -> int:
    """Run the CLI and return its exit code; every failure becomes `snpvirt: error:` + `hint:`."""
    json_mode = "--json" in argv
    try:
        code = typer.main.get_command(app).main(args=argv, prog_name="snpvirt", standalone_mode=False)
        return code if isinstance(code, int) else 0
    except SnpvirtError as err:
        return _fail(err, json_mode)
    except typer.Abort:
        output.print_error("interrupted")
        return 130
    except typer.TyperException as exc:  # click's usage errors (typer vendors click)
        ctx = getattr(exc, "ctx", None)
        path = ctx.command_path if ctx is not None else "snpvirt"
        err = SnpvirtError(exc.format_message(), f"see: {path} --help")
        err.kind, err.exit_code = "usage", getattr(exc, "exit_code", ExitCode.BAD_INPUT)
        return _fail(err, json_mode)
    except KeyboardInterrupt:
        output.print_error("interrupted")
        return 130
    except Exception as exc:  # a bug: say so in one line unless --debug asks for the traceback
        if "--debug" in argv:
            raise
        err = SnpvirtError(f"internal error: {type(exc).__name__}: {exc}", "run again with --debug and report the traceback")
        return _fail(err, json_mode)


def _fail(err: SnpvirtError, json_mode: bool) -> int:
    if json_mode:
        output.print_json(output.envelope(False, error=err))
    output.print_error(err.message, err.hint)
    return int(err.exit_code)
