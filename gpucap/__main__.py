"""`python -m gpucap` runs the command line."""

from gpucap.cli import main

raise SystemExit(main())
