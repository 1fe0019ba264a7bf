"""``python -m kubetune_trainer --config PATH`` — the same as the ``kubetune-trainer`` command."""

from kubetune_trainer.main import main

raise SystemExit(main())
