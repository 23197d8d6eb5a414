"""The Click classes behind every backout command: plain help that names arguments as Click does (`VERSION`,
`[VERSION]`) without Python types, usage errors said in backout's words (one line on stderr, exit 2), and a
top-level group that imports a command's module only when that command runs or shows its help.

Command modules build their sub-commands with this module's `Typer`; `backout.cli.main` lists the
commands, with their one-line help, as data for `LazyGroup`.
"""

from __future__ import annotations

import importlib
import re
from difflib import get_close_matches
from typing import Any, Callable, NamedTuple, NoReturn

import typer
import typer.main
from typer.core import TyperCommand, TyperGroup

try:  # Typer >= 0.2x carries its own copy of Click
    from typer._click import exceptions as errors
except ImportError:  # pragma: no cover - older Typer on top of Click
    from click import exceptions as errors  # type: ignore[no-redef]

__all__ = ["Command", "Group", "LazyGroup", "Lazy", "Typer", "usage_sentence"]


def _argument_name(param: Any) -> str:
    return str(param.metavar or (param.name or "").upper())


def _argument_usage(param: Any) -> str:
    name = _argument_name(param)
    if param.nargs != 1:
        name += "..."
    return name if param.required else f"[{name}]"


def _with_context(exc: Any, ctx: Any) -> Any:
    """Click's parser raises some usage errors without the context they happened in: add it, so the
    error can name the command."""
    if exc.ctx is None:
        exc.ctx, exc.cmd = ctx, ctx.command
    return exc


class Command(TyperCommand):
    """A command whose usage line and help name arguments as Click does: `VERSION`, `[VERSION]`, no types."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except errors.UsageError as exc:
            raise _with_context(exc, ctx)

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                pieces.append(_argument_usage(param))
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces

    def format_options(self, ctx: Any, formatter: Any) -> None:
        arguments, options = [], []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                if not param.hidden:
                    arguments.append((_argument_name(param), param.help or ""))
            else:
                record = param.get_help_record(ctx)
                if record is not None:
                    options.append(record)
        if arguments:
            with formatter.section("Arguments"):
                formatter.write_dl(arguments)
        if options:
            with formatter.section("Options"):
                formatter.write_dl(options)


class Group(TyperGroup):
    """A command group with plain help (its sub-commands are `Command`s)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except errors.UsageError as exc:
            raise _with_context(exc, ctx)


class Typer(typer.Typer):
    """typer.Typer with backout's defaults: plain help (no rich boxes), no completion options, Python's own
    tracebacks for bugs, and `Command` for every command."""

    def __init__(self, **settings: Any) -> None:
        settings.setdefault("cls", Group)
        settings.setdefault("rich_markup_mode", None)
        settings.setdefault("add_completion", False)
        settings.setdefault("pretty_exceptions_enable", False)
        super().__init__(**settings)

    def command(self, name: str | None = None, *, cls: Any = None, **settings: Any) -> Callable[..., Any]:
        return super().command(name, cls=cls or Command, **settings)


class Lazy(NamedTuple):
    """A top-level command: where it lives (module and attribute: a Typer app or a command function) and
    its one-line help for `backout --help`."""

    module: str
    attribute: str
    short_help: str


class UsageError(errors.UsageError):
    """A usage error said as one of backout's sentences."""

    def __init__(self, sentence: str, ctx: Any = None) -> None:
        super().__init__(sentence, ctx)

    def show(self, file: Any = None) -> None:
        typer.echo(f"backout: error: {self.message}", err=True)


class LazyGroup(Group):
    """The top-level group: lists `lazy` without importing anything, imports a command's module when the
    command is resolved, and turns Click's usage errors into backout's sentences."""

    lazy: dict[str, Lazy] = {}

    def list_commands(self, ctx: Any) -> list[str]:
        return [*self.lazy, *(name for name in self.commands if name not in self.lazy)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            self.commands[cmd_name] = self._load(cmd_name)
        return self.commands.get(cmd_name)

    def _load(self, name: str) -> Any:
        entry = self.lazy[name]
        found = getattr(importlib.import_module(entry.module), entry.attribute)
        if isinstance(found, typer.Typer):
            command = typer.main.get_command(found)
        else:
            single = Typer()
            single.command(name)(found)
            command = typer.main.get_command(single)
        command.name = name
        return command

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        rows = [(name, entry.short_help) for name, entry in self.lazy.items()]
        rows += [(name, cmd.get_short_help_str()) for name, cmd in self.commands.items()
                 if name not in self.lazy and not cmd.hidden]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except errors.UsageError as exc:
            _restate(exc)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except errors.UsageError as exc:
            _restate(exc)


def _restate(exc: Exception) -> NoReturn:
    if isinstance(exc, (UsageError, errors.NoArgsIsHelpError)):
        raise exc
    assert isinstance(exc, errors.UsageError)
    raise UsageError(usage_sentence(exc), exc.ctx) from None


def _option_usage(param: Any) -> str:
    names = sorted(param.opts, key=lambda n: (not n.startswith("--"), -len(n)))
    if getattr(param, "is_flag", False):
        return names[0]
    return f"{names[0]} {param.metavar or (param.name or '').upper()}"


def _param_usage(param: Any) -> str:
    return _option_usage(param) if param.param_type_name == "option" else _argument_name(param)


def _purpose(text: str | None) -> str:
    """An option's help as a parenthesis: its first sentence, starting lower case, without the full stop."""
    if not text:
        return ""
    first = re.split(r"(?<=[a-z)])\. ", text.strip(), maxsplit=1)[0].rstrip(".")
    word = first.split(" ", 1)[0]
    if word[:1].isupper() and (len(word) == 1 or word[1:].islower()):  # "The brain" -> "the brain"; not "ID"
        first = first[0].lower() + first[1:]
    return first


_RANGES = [
    (re.compile(r"^(?P<v>\S+) is not in the range x>=(?P<lo>\S+?)\.?$"), "{v} is too small: at least {lo}"),
    (re.compile(r"^(?P<v>\S+) is not in the range x<=(?P<hi>\S+?)\.?$"), "{v} is too large: at most {hi}"),
    (re.compile(r"^(?P<v>\S+) is not in the range (?P<lo>\S+?)<=x<=(?P<hi>\S+?)\.?$"),
     "{v} is out of range: {lo} to {hi}"),
    (re.compile(r"^(?P<v>.+) is not a valid integer\.?$"), "{v} is not a whole number"),
    (re.compile(r"^(?P<v>.+) is not a valid float\.?$"), "{v} is not a number"),
    (re.compile(r"^Input should be a valid integer\b.*$"), "not a whole number"),
    (re.compile(r"^Input should be a valid number\b.*$"), "not a number"),
    (re.compile(r"^Input should be greater than or equal to (?P<lo>\S+?)\.?$"), "must be at least {lo}"),
    (re.compile(r"^Input should be less than or equal to (?P<hi>\S+?)\.?$"), "must be at most {hi}"),
    (re.compile(r"^Input should be greater than (?P<lo>\S+?)\.?$"), "must be more than {lo}"),
    (re.compile(r"^Input should be less than (?P<hi>\S+?)\.?$"), "must be less than {hi}"),
    (re.compile(r"^Got unexpected extra arguments? ?(?:\(s\))? \((?P<args>.*)\)\.?$"),
     "unexpected extra argument(s): {args}"),
]


def _reworded(message: str) -> str:
    for pattern, template in _RANGES:
        found = pattern.match(message)
        if found:
            return template.format(**found.groupdict())
    return message.rstrip(".")


def usage_sentence(exc: Any) -> str:
    """Click's usage error as one sentence: what is wrong and where to read more, e.g. "freeze needs --reason
    TEXT (why ...); see `backout freeze --help`"."""
    ctx = exc.ctx
    path = ctx.command_path if ctx is not None else "backout"
    sub = path.partition(" ")[2]
    see = f"see `{path} --help`"
    param = getattr(exc, "param", None)
    if isinstance(exc, errors.MissingParameter) and param is not None:
        purpose = _purpose(param.help)
        return f"{sub or path} needs {_param_usage(param)}" + (f" ({purpose})" if purpose else "") + f"; {see}"
    if isinstance(exc, errors.NoSuchOption):
        hint = f" (did you mean {' or '.join(sorted(exc.possibilities))}?)" if exc.possibilities else ""
        return f"there is no option {exc.option_name}" + (f" for {sub}" if sub else "") + f"{hint}; {see}"
    if isinstance(exc, errors.BadOptionUsage) and "requires an argument" in exc.message:
        option = next((p for p in (ctx.command.params if ctx else []) if exc.option_name in getattr(p, "opts", ())),
                      None)
        wanted = _option_usage(option) if option is not None else exc.option_name
        return f"{(sub + ': ') if sub else ''}{exc.option_name} needs a value: {wanted}; {see}"
    if isinstance(exc, errors.BadParameter) and param is not None:
        return f"{(sub + ' ') if sub else ''}{_param_usage(param)}: {_reworded(exc.message)}; {see}"
    unknown = re.match(r"No such command '(.*?)'(?:\.|$)", exc.message)
    if unknown:
        known = ctx.command.list_commands(ctx) if ctx is not None else []
        close = get_close_matches(unknown[1], known)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        return (f"{sub} has no command '{unknown[1]}'" if sub else f"there is no command '{unknown[1]}'") + \
            f"{hint}; {see}"
    message = _reworded(exc.message)
    message = message[0].lower() + message[1:] if message[:1].isupper() and message[1:2].islower() else message
    return f"{sub + ': ' if sub else ''}{message}; {see}"
