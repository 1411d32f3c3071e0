"""``python -m bot`` is the same as the ``tinbao`` command."""

from bot.cli import main

raise SystemExit(main())
