"""The ``akidb-embed`` command line.

Errors print one line and exit non-zero (2 for usage errors); ``--debug`` shows the
traceback. Commands other than ``providers``, ``config`` and ``embed`` come from the
entry point group ``akidb_embed.commands`` (the core's ``index`` and ``search``, the
backends' ``export`` and ``mlx-quantize``, any third party's): ``name =
"module:register"``, where ``register(subparsers)`` adds the command named *name*. A
command's module is imported only when that command runs, or for ``--help``.

``akidb-embed config`` shows the ``[embedding]`` configuration and, after it, the
sections of other distributions (the server's ``[server]``), from the entry point group
``akidb_embed.config_sections``: ``name = "module:describe"``, where
``describe(config_path)`` returns ``{key: (json_value, source)}`` for section *name*
(*config_path* is ``--config``, or None). Entry points are read only when a section other
than ``embedding`` is shown (``--section embedding`` reads none).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from ._version import __version__
from .errors import AkidbEmbedError, ConfigError, EmbeddingInputError

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

__all__ = [
    "COMMAND_GROUP",
    "CONFIG_SECTION_GROUP",
    "UsageError",
    "add_config_arguments",
    "config_overrides",
    "main",
]

COMMAND_GROUP = "akidb_embed.commands"
CONFIG_SECTION_GROUP = "akidb_embed.config_sections"

_BUILTIN_COMMANDS = ("providers", "config", "embed")

# Commands of distributions that are not installed by default: how to get them.
_INSTALL_HINTS: dict[str, str] = {
    "export": "pip install 'akidb-embed[onnx]'",
    "mlx-quantize": "pip install 'akidb-embed[mlx]'",
}


class UsageError(Exception):
    """Bad command-line usage: exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def add_config_arguments(
    parser: argparse.ArgumentParser, *, config_help: str | None = None
) -> None:
    """Add the ``[embedding]`` flags (``--config``, ``--provider``, ``--model``,
    ``--batch-size``, ``--max-length``, ``--truncation``, ``--offline``, ``--option``) to
    *parser*; :func:`config_overrides` turns them into ``EmbeddingConfig.load`` arguments.
    Commands of other distributions (``serve``) use it to take the same flags."""
    group = parser.add_argument_group("configuration (overrides file and environment)")
    group.add_argument(
        "--config", metavar="PATH", help=config_help or "TOML file with an [embedding] table"
    )
    group.add_argument("--provider", help="provider name (see `akidb-embed providers`)")
    group.add_argument("--model", help="model id or local folder")
    group.add_argument("--batch-size", type=int, dest="batch_size")
    group.add_argument("--max-length", type=int, dest="max_length")
    group.add_argument("--truncation", choices=["truncate", "error"])
    group.add_argument("--offline", action="store_true", default=None)
    group.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="provider option (repeatable); VALUE is parsed as JSON when it can be",
    )


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The configuration keys given on the command line (``--option`` values as JSON when
    they parse, else as strings); a malformed ``--option`` is a :class:`UsageError`."""
    overrides: dict[str, Any] = {}
    for key in ("provider", "model", "batch_size", "max_length", "truncation", "offline"):
        value = getattr(args, key, None)
        if value is not None:
            overrides[key] = value
    options: dict[str, Any] = {}
    for item in getattr(args, "option", []) or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--option expects KEY=VALUE, got {item!r}")
        try:
            options[key] = json.loads(raw)
        except json.JSONDecodeError:
            options[key] = raw
    if options:
        overrides["options"] = options
    return overrides


def _load_config(args: argparse.Namespace) -> Any:
    from ._config import EmbeddingConfig

    return EmbeddingConfig.load(getattr(args, "config", None), **config_overrides(args))


# --- providers ----------------------------------------------------------------------------


def _cmd_providers(args: argparse.Namespace) -> int:
    from ._registry import available_providers

    rows = available_providers()
    if args.json:
        print(json.dumps({n: vars(s) for n, s in rows.items()}, indent=2))
        return 0
    table = [("NAME", "STATUS", "DISTRIBUTION", "VERSION", "DETAIL")]
    for name, status in rows.items():
        table.append(
            (
                name,
                "ok" if status.loadable else "unavailable",
                status.distribution or f"({status.source})",
                status.version or "-",
                status.reason or status.value,
            )
        )
    _print_table(table)
    return 0


# --- config -------------------------------------------------------------------------------


def _cmd_config(args: argparse.Namespace) -> int:
    wanted = set(args.section) if args.section else None
    rows: dict[str, tuple[Any, str]] = {}
    if wanted is None or "embedding" in wanted:
        config = _load_config(args)
        sources = config.sources()
        rows = {key: (v, sources[key]) for key, v in config.to_dict(redact=True).items()}
    sections, failed = _config_sections(args, wanted)
    if args.json:
        # [embedding] keys stay at the top level (the format predates sections); other
        # sections nest under their name.
        doc: dict[str, Any] = {k: {"value": v, "source": s} for k, (v, s) in rows.items()}
        for name, section in sections.items():
            doc[name] = {k: {"value": v, "source": s} for k, (v, s) in section.items()}
        print(json.dumps(doc, indent=2))
    else:
        table = [("KEY", "VALUE", "SOURCE")]
        table += [(key, json.dumps(value), source) for key, (value, source) in rows.items()]
        for name, section in sections.items():
            table += [(f"{name}.{k}", json.dumps(v), s) for k, (v, s) in section.items()]
        _print_table(table)
    return 1 if failed else 0


def _config_sections(
    args: argparse.Namespace, wanted: set[str] | None
) -> tuple[dict[str, dict[str, tuple[Any, str]]], bool]:
    """The sections of group ``akidb_embed.config_sections`` that *wanted* asks for (all
    when None), and whether one of them failed to load (reported on standard error)."""
    if wanted is not None and wanted <= {"embedding"}:
        return {}, False
    from ._registry import _ep_label, _read_group

    found = {n: eps for n, eps in _read_group(CONFIG_SECTION_GROUP).items() if n != "embedding"}
    unknown = sorted((wanted or set()) - {"embedding", *found})
    if unknown:
        known = ", ".join(["embedding", *sorted(found)])
        raise UsageError(f"unknown config section {unknown[0]!r}; known sections: {known}")
    sections: dict[str, dict[str, tuple[Any, str]]] = {}
    failed = False
    for name in sorted(found):
        if wanted is not None and name not in wanted:
            continue
        eps = found[name]
        if len(eps) > 1:
            print(
                f"warning: config section {name!r} is claimed by both {_ep_label(eps[0])} "
                f"and {_ep_label(eps[1])}; uninstall one of them",
                file=sys.stderr,
            )
            failed = True
            continue
        try:
            describe = eps[0].load()
            section = dict(describe(getattr(args, "config", None)))
        # An invalid configuration is the answer the user asked for: report it as such.
        except ConfigError:
            raise
        except Exception as exc:  # a broken plugin must not hide the other sections
            print(
                f"warning: config section {name!r} ({_ep_label(eps[0])}) failed: {exc!r}",
                file=sys.stderr,
            )
            failed = True
            continue
        sections[name] = section
    return sections, failed


# --- embed --------------------------------------------------------------------------------


def _read_texts(args: argparse.Namespace, stdin: TextIO) -> list[str]:
    if args.texts and args.file:
        raise UsageError("give texts as arguments or with --file, not both")
    if args.texts:
        return list(args.texts)
    if args.file and args.file != "-":
        path = Path(args.file)
        try:
            content = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise EmbeddingInputError(f"input file not found: {path}") from None
        except UnicodeDecodeError as exc:
            raise EmbeddingInputError(f"input file {path} is not UTF-8 text: {exc}") from exc
        except OSError as exc:
            raise EmbeddingInputError(f"cannot read input file {path}: {exc.strerror}") from exc
    else:
        if stdin.isatty():
            raise UsageError("no texts: pass them as arguments, with --file, or on standard input")
        content = stdin.read()
    lines = content.splitlines()
    if args.skip_empty:
        lines = [line for line in lines if line.strip()]
    return lines


def _cmd_embed(args: argparse.Namespace) -> int:
    import numpy as np

    from ._manager import EmbeddingManager
    from .atomic import atomic_write

    texts = _read_texts(args, sys.stdin)
    config = _load_config(args)
    output = Path(args.output) if args.output else None
    fmt = args.format or ("npy" if output and output.suffix == ".npy" else "json")
    with EmbeddingManager.from_config(config) as manager:
        if args.query:
            if len(texts) != 1:
                raise UsageError(f"--query embeds exactly one text, got {len(texts)}")
            vectors = manager.embed_query(texts[0])[None, :]
        else:
            vectors = manager.embed(texts, progress=len(texts) >= 256 and not args.quiet)
        model = manager.info.model
    if fmt == "npy":
        if output is None:
            raise UsageError("--format npy needs --output FILE.npy")
        atomic_write(output, lambda fh: np.save(fh, vectors, allow_pickle=False))
    else:
        doc = {
            "model": model,
            "dimension": int(vectors.shape[1]),
            "data": [
                {"text": t, "embedding": v.tolist()} for t, v in zip(texts, vectors, strict=False)
            ],
        }
        payload = json.dumps(doc, ensure_ascii=False).encode("utf-8")
        if output is None:
            sys.stdout.write(payload.decode("utf-8") + "\n")
        else:
            atomic_write(output, lambda fh: fh.write(payload))
    if output is not None and not args.quiet:
        print(
            f"wrote {len(texts)} vectors of dimension {vectors.shape[1]} to {output}",
            file=sys.stderr,
        )
    return 0


# --- plumbing -----------------------------------------------------------------------------


def _print_table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser for a command line whose command is *command*.

    Plugin commands are loaded only as *command* needs them: none for a built-in
    command, that one for a plugin's, all of them (for ``--help``) when *command* is
    None. A plugin command that cannot be loaded raises an exception whose message
    says why (not installed, with the ``pip install`` command; claimed twice; broken).
    """
    parser = _Parser(prog="akidb-embed", description="Text to embedding vectors.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("providers", help="list discovered providers and their status")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_providers)

    p = sub.add_parser(
        "config", help="show the resolved configuration and where each value came from"
    )
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--section",
        action="append",
        metavar="NAME",
        help="show only this section (repeatable): embedding, or an installed one (server)",
    )
    add_config_arguments(p)
    p.set_defaults(func=_cmd_config)

    p = sub.add_parser("embed", help="embed texts (arguments, --file, or standard input)")
    p.add_argument("texts", nargs="*", help="texts to embed")
    p.add_argument("-f", "--file", help="file with one text per line ('-' for standard input)")
    p.add_argument("-o", "--output", help="write to this file (.npy or .json) instead of stdout")
    p.add_argument("--format", choices=["json", "npy"])
    p.add_argument("--query", action="store_true", help="embed one text as a query")
    p.add_argument("--skip-empty", action="store_true", help="drop empty lines of the input")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    add_config_arguments(p)
    p.set_defaults(func=_cmd_embed)

    _add_plugin_commands(sub, command)
    return parser


class _CommandUnavailable(Exception):
    """A plugin command that cannot run: not installed, claimed twice, or broken."""


def _add_plugin_commands(sub: Any, command: str | None) -> None:
    """Add the commands of group ``akidb_embed.commands`` that *command* needs.

    A built-in command needs none; a plugin command, only itself; no command (``--help``)
    loads them all, so the help can describe them; an unknown one, only their names.
    """
    if command in _BUILTIN_COMMANDS:
        return
    from ._registry import _read_group

    found = {n: eps for n, eps in _read_group(COMMAND_GROUP).items() if n not in _BUILTIN_COMMANDS}
    if command is not None:
        if command in found:
            _load_command(sub, command, found[command])
            return
        if command in _INSTALL_HINTS:
            raise _CommandUnavailable(
                f"the '{command}' command is not installed; "
                f"install it with: {_INSTALL_HINTS[command]}"
            )
    for name in sorted({*found, *_INSTALL_HINTS}):
        help_text = None
        if name not in found:
            help_text = f"(not installed: {_INSTALL_HINTS[name]})"
        elif command is None:
            try:
                _load_command(sub, name, found[name])
            # One broken plugin must not take the others' help down with it.
            except _CommandUnavailable:
                help_text = f"(unavailable: run `akidb-embed {name}` to see why)"
        if name not in sub.choices:
            sub.add_parser(name, help=help_text, add_help=False)


def _load_command(sub: Any, name: str, eps: list[EntryPoint]) -> None:
    from ._registry import _ep_label

    if len(eps) > 1:
        raise _CommandUnavailable(
            f"the '{name}' command is claimed by both {_ep_label(eps[0])} and "
            f"{_ep_label(eps[1])}; uninstall one of them"
        )
    ep = eps[0]
    try:
        register = ep.load()
        register(sub)
    # A missing dependency of the plugin: say what to install.
    except ImportError as exc:
        dist = ep.dist.name if ep.dist is not None else None
        hint = _INSTALL_HINTS.get(name) or (f"pip install --upgrade '{dist}'" if dist else None)
        advice = f"; install it with: {hint}" if hint else ""
        raise _CommandUnavailable(f"the '{name}' command is not installed ({exc}){advice}") from exc
    except Exception as exc:  # a broken plugin must say which plugin broke
        raise _CommandUnavailable(
            f"the '{name}' command ({_ep_label(ep)}) failed to load: {exc!r}"
        ) from exc
    if name not in sub.choices:
        raise _CommandUnavailable(f"entry point {_ep_label(ep)} did not add a '{name}' command")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    command = next((a for a in argv if not a.startswith("-")), None)
    try:
        parser = build_parser(command)
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help(sys.stderr)
            return 2
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except _CommandUnavailable as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (AkidbEmbedError, OSError) as exc:
        if debug:
            raise
        code = 2 if isinstance(exc, ConfigError) else 1
        print(f"error: {exc}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
