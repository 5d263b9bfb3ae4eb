"""`python -m gateway` is the same as the `callback-gateway` command."""

from gateway.cli import main

raise SystemExit(main())
