import sys

from ntk_vs_nn.cli import main

sys.exit(main())
