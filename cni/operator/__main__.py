import sys

from cni.operator import main

sys.exit(main())
