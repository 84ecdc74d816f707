"""The `aevb` verbs' argument parsing, one module per verb (all argparse code lives here).

Each module has ``add_parser(subparsers)`` that registers its verb with ``func=run(args) -> int``.
Modules import only the standard library at the top, so `aevb --help` stays quick; a verb imports
what it needs when it runs. Messages name flags here; the tasks below name parameters.
"""
