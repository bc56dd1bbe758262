import sys

from slmkit.train.cli import main

sys.exit(main())
