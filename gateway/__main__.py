"""`python -m gateway` is the same as the `callback-gateway` command."""

from gateway.cli.main import main

raise SystemExit(main())
