#!/usr/bin/env python
"""Train and test a recommender with recbole-ssm: ``python run_recbole_ssm.py --model=Hydra4Rec``.

See ``python run_recbole_ssm.py --help``.
"""

import sys

from recbole_ssm.cli import main

if __name__ == "__main__":
    sys.exit(main())
