import sys

from tools.demo.run import main

sys.exit(main())
