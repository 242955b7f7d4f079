"""The `snpvirt` command: root options, the command table, and the one place errors are printed.

Commands load lazily: `snpvirt --help` imports no command module, and each command imports only
its own module and what it needs (libvirt, lxml, jinja2), so start-up stays close to `import typer`.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Optional

import typer
from typer.core import TyperGroup, TyperOption

from typer._click.exceptions import NoArgsIsHelpError

from snpvirt import __version__, output
from snpvirt.errors import ExitCode, SnpvirtError

CONTEXT = {"help_option_names": ["-h", "--help"]}

# name -> (module under snpvirt.cli, function or Typer app, epilog attribute, one-line help for the listing)
COMMANDS: dict[str, tuple[str, str, str | None, str]] = {
    "host": ("host_cmd", "host_app", None, "Host readiness for SEV-SNP guests."),
    "guest": ("guest_cmd", "guest_app", None, "Inside an SEV-SNP guest: check it can get attestation reports, and get one."),
    "attest": ("attest_cmd", "attest_app", None, "Read attestation reports and verify them against AMD's keys and what snpvirt launched."),
    "render": ("render_cmd", "render", "EPILOG", "Render SPEC to libvirt domain XML, checked by libvirt's schema and snpvirt's SNP rules."),
    "validate": ("validate_cmd", "validate", "EPILOG", "Check domain XML against libvirt's schema and snpvirt's SEV-SNP rules."),
    "apply": ("lifecycle_cmd", "apply", "APPLY_EPILOG", "Make each spec's domain exist as specified and run: define, redefine when changed, start."),
    "define": ("lifecycle_cmd", "define", "DEFINE_EPILOG", "Define (or redefine) a domain from a spec or XML, without starting it."),
    "start": ("lifecycle_cmd", "start", "START_EPILOG", "Start managed domains (after the readiness gate); running ones are left as they are."),
    "stop": ("lifecycle_cmd", "stop", "STOP_EPILOG", "Shut managed domains down gracefully; with --force, destroy them after the timeout."),
    "destroy": ("lifecycle_cmd", "destroy", "DESTROY_EPILOG", "Power managed domains off at once (like pulling the plug)."),
    "undefine": ("lifecycle_cmd", "undefine", "UNDEFINE_EPILOG", "Remove stopped managed domains' definitions; absent ones are already done."),
    "list": ("inventory_cmd", "list_domains", "LIST_EPILOG", "List snpvirt-managed domains: state, size, policy, kernel hashes, expected measurement."),
    "status": ("inventory_cmd", "status", "STATUS_EPILOG", "One managed domain in full: state, policy, spec, launch inputs and their digests, timestamps."),
    "watch": ("watch_cmd", "watch", "WATCH_EPILOG", "Print domain lifecycle events (defined, started, stopped, ...) as libvirt reports them."),
    "import": ("import_cmd", "import_domain", "IMPORT_EPILOG", "Check a domain against the SEV-SNP rules and, with --fix, bring it under management."),
    "measure": ("measure_cmd", "measure", "MEASURE_EPILOG", "Print the 48-byte SEV-SNP launch measurement an honest guest will report (lowercase hex)."),
    "idblock": ("measure_cmd", "idblock", "IDBLOCK_EPILOG", "Build the base64 idBlock (96 bytes) and idAuth (4096 bytes) libvirt takes, and the key digests."),
    "image": ("image_cmd", "image_app", None, "Ubuntu cloud images, verified (gpgv, SHA-256), as volumes of a libvirt storage pool."),
    "fleet": ("fleet_cmd", "fleet_app", None, "Many libvirt hosts, one desired state: check, plan, apply and list a fleet of SEV-SNP domains."),
    "completion": ("completion_cmd", "completion", "EPILOG", "Print the shell completion script for bash, zsh or fish."),
}
PROG = "snpvirt"
COMPLETE_VAR = "_SNPVIRT_COMPLETE"  # the shell scripts of `snpvirt completion` set it to ask for completions
ROOT_CONNECT = "snpvirt.connect"  # ctx.meta key: the URI given as `snpvirt -c URI COMMAND`


def load_command(name: str):
    """Import one command's module and build its click command."""
    module_name, attribute, epilog, _ = COMMANDS[name]
    module = importlib.import_module(f"snpvirt.cli.{module_name}")
    target = getattr(module, attribute)
    if isinstance(target, typer.Typer):
        return _accept_global_options(typer.main.get_command(target))
    single = typer.Typer(add_completion=False, rich_markup_mode=None, pretty_exceptions_enable=False,
                         context_settings=CONTEXT)
    single.command(name, epilog=getattr(module, epilog) if epilog else None)(target)
    return _accept_global_options(typer.main.get_command(single))


def _accept_global_options(command):
    """-c/--connect and --debug work before the command (`snpvirt -c URI list`, as virsh) and after it
    (`snpvirt render x --debug`, as git): a command's own --connect defaults to the root's, and every
    command takes --debug (hidden; run() reads it from argv to show a traceback)."""
    for param in command.params:
        if param.name == "connect":
            param.default, param.show_default = _root_connect, False
    if not any(param.name == "debug" for param in command.params):
        command.params.append(TyperOption(param_decls=["--debug"], is_flag=True, hidden=True, expose_value=False,
                                          help="Show tracebacks for unexpected errors."))
    for sub in getattr(command, "commands", {}).values():
        _accept_global_options(sub)
    return command


def _root_connect() -> Optional[str]:
    from typer._click.globals import get_current_context

    ctx = get_current_context(silent=True)
    return ctx.meta.get(ROOT_CONNECT) if ctx is not None else None


class LazyGroup(TyperGroup):
    def list_commands(self, ctx) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx, name: str):
        return load_command(name) if name in COMMANDS else None

    def format_commands(self, ctx, formatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, help_text) for name, (_, _, _, help_text) in COMMANDS.items()])

    def shell_complete(self, ctx, incomplete: str) -> list:
        """Command names from the table, so completing `snpvirt ap` imports no command module."""
        from typer._click.shell_completion import CompletionItem

        names = [CompletionItem(name, help=help_text) for name, (_, _, _, help_text) in COMMANDS.items()
                 if name.startswith(incomplete)]
        return names + typer.core._click.Command.shell_complete(self, ctx, incomplete)

    def _main_shell_completion(self, ctx_args, prog_name: str, complete_var: Optional[str] = None) -> None:
        """Answer the completion scripts' requests (typer's `complete_bash`, or click's `bash_complete`)."""
        instruction = os.environ.get(COMPLETE_VAR, "")
        if not instruction:
            return
        from typer.completion import completion_init

        completion_init()  # registers typer's bash, zsh and fish classes (add_completion=False leaves them out)
        # zsh and fish show each candidate's help, which typer passes through rich: wrapped at 80 columns, a
        # long help would become a second, bogus candidate line. One line per candidate.
        os.environ["TERMINAL_WIDTH"] = "4096"
        first, _, second = instruction.partition("_")
        if first in ("bash", "zsh", "fish"):  # click's order: SHELL_ACTION
            os.environ[COMPLETE_VAR] = f"{second}_{first}"
        super()._main_shell_completion(ctx_args, prog_name, COMPLETE_VAR)


app = typer.Typer(
    name="snpvirt",
    cls=LazyGroup,
    help="AMD SEV-SNP confidential VMs through libvirt: check the host, render and validate domain XML, "
         "manage domains, compute the expected launch measurement.",
    epilog="Example: snpvirt host check && snpvirt apply examples/web-01.toml --connect qemu:///system",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings=CONTEXT,
)


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"snpvirt {__version__}\n")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    connect: Optional[str] = typer.Option(None, "--connect", "-c", metavar="URI",
                                          help="libvirt URI for the command, as `virsh -c URI` (the same as the "
                                               "command's own --connect)."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for unexpected errors (also after the command)."),
) -> None:
    """AMD SEV-SNP confidential VMs through libvirt."""
    ctx.meta[ROOT_CONNECT] = connect


def main(argv: list[str] | None = None) -> None:
    sys.exit(run(sys.argv[1:] if argv is None else argv))


def run(argv: list[str]) -> int:
    """Run the CLI and return its exit code; every failure becomes `snpvirt: error:` + `hint:`."""
    json_mode = _json_mode(argv)
    try:
        code = typer.main.get_command(app).main(args=argv, prog_name=PROG, standalone_mode=False)
        return code if isinstance(code, int) else 0
    except SnpvirtError as err:
        return _fail(err, json_mode)
    except NoArgsIsHelpError as asked:  # `snpvirt`, `snpvirt host`: the help is the answer, not an error
        sys.stdout.write(asked.ctx.get_help() + "\n")
        return 0
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


def _json_mode(argv: list[str]) -> bool:
    """Did the command line ask for one JSON document? `--json` anywhere before a `--` (before or after
    the command, as click accepts it); except for `watch`, whose stdout is an NDJSON stream of events
    only (its errors go to stderr)."""
    words = argv[:argv.index("--")] if "--" in argv else argv
    return "--json" in words and _command_name(words) != "watch"


def _command_name(argv: list[str]) -> str | None:
    """The command word: the first argument that is not a root option (nor -c/--connect's value)."""
    words = iter(argv)
    for word in words:
        if word in ("-c", "--connect"):
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def _fail(err: SnpvirtError, json_mode: bool) -> int:
    if json_mode:
        output.print_json(output.envelope(False, error=err))
    output.print_error(err.message, err.hint)
    return int(err.exit_code)
