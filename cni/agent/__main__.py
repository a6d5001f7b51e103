"""`python -m cni.agent`: underlayd run from source."""

from cni.agent import main

main()
