"""``python -m pemn ...``: the pemn command line."""

from pemn.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
