import sys

from devenv.engine.daemon import main

sys.exit(main(sys.argv[1:]))
