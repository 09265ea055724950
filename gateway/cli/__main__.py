"""``python -m gateway.cli``: the same as the ``raccord`` command."""

import sys

from gateway.cli.commands import main

sys.exit(main())
