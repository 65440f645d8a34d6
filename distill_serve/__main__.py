import sys

from distill_serve.cli import main

sys.exit(main())
