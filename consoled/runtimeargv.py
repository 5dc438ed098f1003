"""Which container a console belongs to, from the argv of the runtime that sent it.

A runtime started with ``--console-socket PATH`` connects to the daemon and hands over
a pty master; the daemon reads the peer's ``/proc/PID/cmdline`` and gives it to
:func:`parse_runtime_argv`. Pure logic: no I/O, stdlib only.

The parser mirrors each runtime's own command-line parser, as verified against the
real binaries (runc 1.1.5 with urfave/cli 1.22.9 over Go's ``flag``; crun 1.8.1 with
glibc argp):

runc:
    Global options, then the subcommand. ``-name`` and ``--name`` are the same option;
    values as ``--opt=V`` or ``--opt V``; booleans take a value only as
    ``--flag=BOOL``; no clustering (``-dt`` is an unknown option, as is ``-pFILE``);
    no abbreviations; two forms of one option (``-d --detach``) is an error. ``run``
    and ``create`` move known options that follow the id in front of it
    (urfave/cli ``reorderArgs``), with its quirk that the argument after *any* known
    option, boolean or not, moves with it: ``runc run -d ID --keep`` fails in runc
    and here. ``exec`` does not reorder: everything after the id is the command.
crun:
    getopt in order (``ARGP_IN_ORDER``) at every level: options stop at the first
    non-option or ``--``, so nothing after the id is ever an option. Unambiguous
    prefixes of long options are accepted; short options cluster (``-dt``, ``-bDIR``);
    ``--tty``/``-t`` has an optional value that must be attached (``--tty=false``,
    ``-tfalse``; so ``-td`` is ``--tty=d``). argp also accepts the hidden
    ``--program-name NAME`` and ``--HANG[=SECS]`` everywhere.

Option values (numbers, ``--log-format``) and the container id are not checked: they
do not change which argument is which. Help, usage and version options make the
runtime print and exit without connecting, so they are errors here. An empty
``--console-socket=`` is returned as ``""``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Literal

__all__ = [
    "RUNTIME_OPTIONS",
    "ArgvError",
    "Arity",
    "OptionSpec",
    "RuntimeInvocation",
    "RuntimeOptions",
    "parse_runtime_argv",
]


class ArgvError(ValueError):
    """The argv cannot be understood; the message says precisely why."""


@dataclass(frozen=True, slots=True)
class RuntimeInvocation:
    """What a runtime's argv says about the console it hands out.

    Attributes:
        runtime: ``"runc"`` or ``"crun"``.
        command: ``"run"``, ``"create"``, ``"restore"`` (each hands out the master of the
            container's init) or ``"exec"``.
        container_id: the id, unchecked.
        process_args: for ``exec``, the command and its arguments after the id; ``()``
            for run/create/restore, and for ``exec --process FILE``.
        console_socket: the last ``--console-socket`` value, or ``None``.
    """

    runtime: str
    command: str
    container_id: str
    process_args: tuple[str, ...]
    console_socket: str | None


class Arity(enum.Enum):
    """Whether an option takes a value."""

    FLAG = "flag"
    VALUE = "value"
    OPTIONAL = "optional"  # argp OPTION_ARG_OPTIONAL: only as --opt=V or -oV


@dataclass(frozen=True, slots=True)
class OptionSpec:
    """One option of a runtime.

    Attributes:
        longs: long names (more than one character), without dashes.
        shorts: one-character names, without the dash.
        arity: whether it takes a value.
        exits: it makes the runtime print help, usage or version and exit.
        hidden: accepted, but not listed by ``--help``.
        alias_of: the option it is the same as to getopt (same argp key), so an
            abbreviation matching both is not ambiguous.
    """

    longs: tuple[str, ...]
    shorts: tuple[str, ...] = ()
    arity: Arity = Arity.FLAG
    exits: bool = False
    hidden: bool = False
    alias_of: str | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """All names, long ones first, without dashes."""
        return self.longs + self.shorts


@dataclass(frozen=True, slots=True)
class RuntimeOptions:
    """A runtime's command-line grammar.

    Attributes:
        syntax: which parser the runtime uses.
        global_options: options before the subcommand.
        commands: the options of each subcommand that hands out a console.
        other_commands: every other subcommand name (and alias) the runtime knows.
    """

    syntax: Literal["urfave-cli", "argp"]
    global_options: tuple[OptionSpec, ...]
    commands: Mapping[str, tuple[OptionSpec, ...]]
    other_commands: frozenset[str]


def _opt(
    *names: str, arity: Arity = Arity.FLAG, exits: bool = False, hidden: bool = False
) -> OptionSpec:
    longs = tuple(n for n in names if len(n) > 1)
    return OptionSpec(longs, tuple(n for n in names if len(n) == 1), arity, exits, hidden)


def _val(*names: str) -> OptionSpec:
    return _opt(*names, arity=Arity.VALUE)


# fmt: off
# runc: urfave/cli appends --help/-h to every command but lists it only at the top.
_RUNC_HELP: Final = _opt("help", "h", exits=True, hidden=True)
_RUNC_CREATE: Final = (
    _val("bundle", "b"), _val("console-socket"), _val("pid-file"), _opt("no-pivot"),
    _opt("no-new-keyring"), _val("preserve-fds"), _RUNC_HELP,
)
_RUNC: Final = RuntimeOptions(
    syntax="urfave-cli",
    global_options=(
        _opt("debug"), _val("log"), _val("log-format"), _val("root"), _val("criu"),
        _opt("systemd-cgroup"), _val("rootless"), _opt("help", "h", exits=True),
        _opt("version", "v", exits=True),
    ),
    commands=MappingProxyType({
        "run": (*_RUNC_CREATE, _opt("detach", "d"), _opt("keep"), _opt("no-subreaper")),
        "create": _RUNC_CREATE,
        # restore hands out the master of the restored init ("orphan-pts-master").
        "restore": (
            _val("console-socket"), _val("image-path"), _val("work-path"),
            _opt("tcp-established"), _opt("ext-unix-sk"), _opt("shell-job"),
            _opt("file-locks"), _val("manage-cgroups-mode"), _val("bundle", "b"),
            _opt("detach", "d"), _val("pid-file"), _opt("no-subreaper"), _opt("no-pivot"),
            _val("empty-ns"), _opt("auto-dedup"), _opt("lazy-pages"), _val("lsm-profile"),
            _val("lsm-mount-context"), _RUNC_HELP,
        ),
        "exec": (
            _val("console-socket"), _val("cwd"), _val("env", "e"), _opt("tty", "t"),
            _val("user", "u"), _val("additional-gids", "g"), _val("process", "p"),
            _opt("detach", "d"), _val("pid-file"), _val("process-label"), _val("apparmor"),
            _opt("no-new-privs"), _val("cap", "c"), _val("preserve-fds"), _val("cgroup"),
            _opt("ignore-paused"), _RUNC_HELP,
        ),
    }),
    other_commands=frozenset({
        "checkpoint", "delete", "events", "kill", "list", "pause", "ps", "resume",
        "spec", "start", "state", "update", "features", "help", "h",
    }),
)

# crun: argp adds these to every parser; the last two are hidden.
_ARGP: Final = (
    _opt("help", "?", exits=True), _opt("usage", exits=True),
    OptionSpec(("program-name",), arity=Arity.VALUE, hidden=True),
    OptionSpec(("HANG",), arity=Arity.OPTIONAL, hidden=True),
)
_CRUN_CREATE: Final = (
    _val("bundle", "b"), _val("console-socket"), _val("config", "f"), _opt("no-new-keyring"),
    _opt("no-pivot"), _opt("no-subreaper"), _val("pid-file"), _val("preserve-fds"), *_ARGP,
)
_CRUN: Final = RuntimeOptions(
    syntax="argp",
    global_options=(
        _val("cgroup-manager"), _opt("debug"), _val("log"), _val("log-format"), _val("root"),
        # crun <= 1.8.x declares --rootless with --root's key: it sets the root directory.
        OptionSpec(("rootless",), arity=Arity.VALUE, alias_of="root"),
        _opt("systemd-cgroup"), _opt("version", "v", "V", exits=True), *_ARGP,
    ),
    commands=MappingProxyType({
        "run": (_opt("detach", "d"), *_CRUN_CREATE),
        "create": _CRUN_CREATE,
        "exec": (
            _val("apparmor"), _val("cgroup"), _val("console-socket"), _val("cwd"),
            _val("cap", "c"), _opt("detach", "d"), _val("env", "e"), _opt("no-new-privs"),
            _val("pid-file"), _val("preserve-fds"), _val("process-label"), _val("process", "p"),
            _opt("tty", "t", arity=Arity.OPTIONAL), _val("user", "u"), *_ARGP,
        ),
        "restore": (
            _val("bundle", "b"), _val("image-path"), _val("work-path"), _opt("tcp-established"),
            _opt("ext-unix-sk"), _opt("shell-job"), _opt("detach", "d"), _val("pid-file"),
            _val("console-socket"), _opt("file-locks"), _val("manage-cgroups-mode"), *_ARGP,
        ),
    }),
    other_commands=frozenset({
        "delete", "list", "kill", "ps", "spec", "start", "state", "pause", "resume", "update",
        "checkpoint",
    }),
)

#: The grammar of each supported runtime, keyed by the runtime's name.
RUNTIME_OPTIONS: Final[Mapping[str, RuntimeOptions]] = MappingProxyType(
    {"runc": _RUNC, "crun": _CRUN}
)
# fmt: on

# Go's strconv.ParseBool, normalised.
_GO_BOOLS: Final = {
    **dict.fromkeys(("1", "t", "T", "TRUE", "true", "True"), "true"),
    **dict.fromkeys(("0", "f", "F", "FALSE", "false", "False"), "false"),
}

# Parsed options: the spec's first name -> the last value given (None: no value).
_Options = dict[str, str | None]


def _exits(shown: str, where: str) -> ArgvError:
    return ArgvError(
        f"{where}: option {shown!r} prints help or version and exits, so it does not hand out "
        "a console"
    )


def _urfave_is_flag(names: Mapping[str, OptionSpec], arg: str) -> bool:
    """urfave/cli 1.22.9 ``argIsFlag``, string quirks included."""
    if arg in ("-", "--") or not arg.startswith("-"):
        return False
    if arg.startswith("--"):
        arg = arg.replace("-", "", 2)
    if arg.startswith("-"):
        arg = arg.replace("-", "", 1)
    return arg.split("=")[0] in names


def _urfave_reorder(names: Mapping[str, OptionSpec], args: Sequence[str]) -> list[str]:
    """urfave/cli 1.22.9 ``reorderArgs``: known options (and what follows each) first."""
    reordered: list[str] = []
    remaining: list[str] = []
    may_be_value = False
    for i, arg in enumerate(args):
        if may_be_value and not _urfave_is_flag(names, arg):
            may_be_value = False
            reordered.append(arg)
        elif arg == "--":
            remaining = ["--", *remaining, *args[i + 1 :]]
            break
        elif _urfave_is_flag(names, arg):
            reordered.append(arg)
            may_be_value = "=" not in arg
        else:
            remaining.append(arg)
    return reordered + remaining


def _go_parse(
    args: Sequence[str], specs: Sequence[OptionSpec], where: str
) -> tuple[_Options, list[str]]:
    """Go ``flag.Parse`` plus urfave/cli's checks; returns options and positionals."""
    names = {n: s for s in specs for n in s.names}
    options: _Options = {}
    forms: dict[OptionSpec, dict[str, str]] = {}  # spec -> name -> as written
    i = 0
    while i < len(args):
        arg = args[i]
        if len(arg) < 2 or arg[0] != "-":
            break
        i += 1
        if arg == "--":
            break
        body = arg[2:] if arg[1] == "-" else arg[1:]
        if not body or body[0] in "-=":
            raise ArgvError(f"bad option syntax {arg!r} for {where}")
        name, eq, value = body.partition("=")
        shown = arg[: len(arg) - len(body)] + name
        spec = names.get(name)
        if spec is None:
            raise ArgvError(f"unknown option {shown!r} for {where}")
        if spec.arity is Arity.FLAG:
            if eq and value not in _GO_BOOLS:
                raise ArgvError(f"invalid boolean value {value!r} for option {shown!r} of {where}")
            value = _GO_BOOLS[value] if eq else "true"
        elif not eq:
            if i == len(args):
                raise ArgvError(f"option {shown!r} for {where} needs a value")
            value, i = args[i], i + 1
        options[spec.names[0]] = value
        forms.setdefault(spec, {}).setdefault(name, shown)
    for spec, seen in forms.items():
        if len(seen) > 1:
            both = " and ".join(map(repr, seen.values()))
            raise ArgvError(f"{where}: {both} are two forms of the same option; runc rejects that")
        if spec.exits and options[spec.names[0]] == "true":
            raise _exits(next(iter(seen.values())), where)
    return options, list(args[i:])


def _argp_long(specs: Sequence[OptionSpec], name: str, where: str) -> OptionSpec:
    """getopt_long lookup: an exact name, else an unambiguous prefix."""
    exact = [s for s in specs if name in s.longs]
    if exact:
        return exact[0]
    matches = {n: s for s in specs for n in s.longs if n.startswith(name)}
    if len({s.alias_of or s.longs[0] for s in matches.values()}) == 1:
        return next(iter(matches.values()))
    if not matches:
        raise ArgvError(f"unknown option {'--' + name!r} for {where}")
    possible = ", ".join("--" + n for n in matches)
    raise ArgvError(f"ambiguous option {'--' + name!r} for {where}: it could be {possible}")


def _argp_parse(
    args: Sequence[str], specs: Sequence[OptionSpec], where: str
) -> tuple[_Options, list[str]]:
    """glibc argp with ``ARGP_IN_ORDER``; returns options and positionals."""
    shorts = {n: s for s in specs for n in s.shorts}
    options: _Options = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if len(arg) < 2 or arg[0] != "-":
            break
        i += 1
        if arg == "--":
            break
        if arg[1] == "-":
            name, eq, attached = arg[2:].partition("=")
            spec = _argp_long(specs, name, where)
            shown = "--" + spec.longs[0]
            if eq and spec.arity is Arity.FLAG:
                raise ArgvError(f"option {shown!r} for {where} takes no value")
            found: list[tuple[OptionSpec, str, str | None]] = [
                (spec, shown, attached if eq else None)
            ]
        else:
            found, j = [], 1
            while j < len(arg):
                shown, j = "-" + arg[j], j + 1
                spec_ = shorts.get(shown[1])
                if spec_ is None:
                    in_ = f" (in {arg!r})" if len(arg) > 2 else ""
                    raise ArgvError(f"unknown option {shown!r}{in_} for {where}")
                if spec_.arity is Arity.FLAG:
                    found.append((spec_, shown, None))
                    continue
                found.append((spec_, shown, arg[j:] or None))  # the rest of the cluster
                break
        for spec, shown, given in found:
            if spec.exits:
                raise _exits(shown, where)
            value = given
            if spec.arity is Arity.VALUE and value is None:
                if i == len(args):
                    raise ArgvError(f"option {shown!r} for {where} needs a value")
                value, i = args[i], i + 1
            options[spec.names[0]] = value
    return options, list(args[i:])


def parse_runtime_argv(argv: Sequence[str]) -> RuntimeInvocation:
    """Parse the argv of a runc or crun process that handed out a console.

    Args:
        argv: the process's command line, ``argv[0]`` included (from ``/proc/PID/cmdline``).

    Returns:
        The runtime, subcommand (``run``, ``create`` or ``exec``), container id, the
        exec'd command (``()`` for run/create/restore and for ``exec --process FILE``) and the
        ``--console-socket`` value, or ``None`` if there is none.

    Raises:
        ArgvError: the runtime, subcommand or an option is unknown, the subcommand does
            not hand out a console, the id or exec command is missing, or the options
            are malformed in a way the runtime itself would reject; the message says which.
    """
    if not argv:
        raise ArgvError("empty argv: no runtime name")
    runtime = argv[0].rpartition("/")[2]
    grammar = RUNTIME_OPTIONS.get(runtime)
    if grammar is None:
        raise ArgvError(
            f"unknown runtime {runtime!r} (argv[0] is {argv[0]!r}); expected runc or crun"
        )
    parse = _go_parse if grammar.syntax == "urfave-cli" else _argp_parse
    _, rest = parse(argv[1:], grammar.global_options, runtime)
    if not rest:
        raise ArgvError(f"{runtime}: missing subcommand")
    command, where = rest[0], f"{runtime} {rest[0]}"
    specs = grammar.commands.get(command)
    if specs is None:
        if command in grammar.other_commands:
            raise ArgvError(f"'{where}' does not hand out a console")
        raise ArgvError(f"unknown {runtime} subcommand {command!r}")
    args: Sequence[str] = rest[1:]
    if grammar.syntax == "urfave-cli" and command != "exec":
        args = _urfave_reorder({n: s for s in specs for n in s.names}, args)
    options, positional = parse(args, specs, where)
    if not positional:
        raise ArgvError(f"{where}: missing container id")
    socket = options.get("console-socket")
    if command != "exec":
        if len(positional) > 1:
            moved = " (runc moves options after the id, and the argument after each, in front)"
            raise ArgvError(
                f"{where}: expected only a container id, got extra arguments {positional[1:]!r} "
                f"after {positional[0]!r}{moved if runtime == 'runc' else ''}"
            )
        return RuntimeInvocation(runtime, command, positional[0], (), socket)
    # runc ignores an empty --process; crun takes it (and fails to open it).
    has_file = bool(options.get("process")) if runtime == "runc" else "process" in options
    if not has_file and len(positional) < 2:
        raise ArgvError(
            f"{where}: missing command after container id {positional[0]!r} (and no --process file)"
        )
    process_args = () if has_file else tuple(positional[1:])
    return RuntimeInvocation(runtime, command, positional[0], process_args, socket)
