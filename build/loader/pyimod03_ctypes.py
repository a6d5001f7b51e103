"""Replaces PyInstaller's pyimod03_ctypes in the underlay bundle (build/underlay.spec).

PyInstaller's version imports ctypes during bootstrap, on every exec (~1.4 ms
here), to let ctypes.CDLL find libraries collected into the bundle by bare
name. underlay loads no bundled library through ctypes: cni/net/netns.py calls
setns from the process's own libc (ctypes.CDLL(None)), which needs no lookup.
So ctypes is left to be imported when, and only if, a plugin uses it.
"""


def install():
    pass
