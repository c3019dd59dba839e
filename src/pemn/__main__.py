"""``python -m pemn ...``: the pemn command line (:mod:`pemn.training.cli`, the application's).

The one module of the core's folder that imports the application (the exemption in .importlinter): like the ``pemn``
console script, it only runs the command line, and nothing imports it."""

from pemn.training.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
