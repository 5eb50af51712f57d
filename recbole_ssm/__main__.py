import sys

from recbole_ssm.cli import main

sys.exit(main())
