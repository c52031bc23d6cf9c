import sys

from migration_assets.cli import main

sys.exit(main())
