"""The ``pretextlab`` command: one entry with sub-commands, each also ``python -m pretextlab.<name>``.

    pretextlab train task=rotation                       # one run (Hydra overrides)
    pretextlab sweep                                     # the default sweep, ending in the table
    pretextlab table outputs/sweeps/<sweep>              # rebuild a table
    pretextlab evaluate outputs/runs/<run> data=voc2007 eval=voc07_svm
    pretextlab export outputs/runs/<run>
    pretextlab audit outputs/runs/<run>
    pretextlab select experiment=<preset> task=jigsaw --config-dir <your configs>

A sub-command replaces this process with ``python -m pretextlab.<name> <arguments>``: the command line,
the process that Lightning's DDP launcher copies for its other ranks, and the working directory on
``sys.path`` (so a ``_target_`` may name a module of the project you run it from) are exactly those
of the module form.
"""

from __future__ import annotations

import difflib
import os
import sys

#: sub-command -> (module, one line of help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("pretextlab.train", "pretrain and evaluate one config, or a Hydra multirun (-m)"),
    "sweep": ("pretextlab.sweep", "the main job: every task of the sweep, each backbone's random init, the table"),
    "table": ("pretextlab.table", "build table.md / table.csv / table.png from sweep or run directories"),
    "evaluate": ("pretextlab.evaluate", "evaluate a pretrained backbone on other data or with other protocols"),
    "export": ("pretextlab.export", "write a run's backbone as safetensors + JSON metadata"),
    "audit": ("pretextlab.audit", "pretext accuracy on content-free inputs (shortcut check)"),
    "select": ("pretextlab.select", "choose a row's settings on a validation split, same budget per row"),
}


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: pretextlab <command> [arguments]   (pretextlab <command> --help for its own)", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if not arguments or arguments[0] in ("-h", "--help", "help"):
        print(usage())
        sys.exit(0 if arguments else 2)
    if arguments[0] in ("-V", "--version"):
        from pretextlab import __version__

        print(f"pretextlab {__version__}")
        sys.exit(0)
    command, rest = arguments[0], arguments[1:]
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, COMMANDS, n=1)
        hint = f"did you mean `pretextlab {close[0]}`? " if close else ""
        print(f"pretextlab: error: unknown command {command!r}; {hint}commands: {', '.join(COMMANDS)}",
              file=sys.stderr)
        sys.exit(2)
    module = COMMANDS[command][0]
    os.execv(sys.executable, [sys.executable, "-m", module, *rest])


if __name__ == "__main__":
    main()
