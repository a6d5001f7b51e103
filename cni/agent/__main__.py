"""`python -m cni.agent`: underlayd."""

from cni.agent import main

main()
