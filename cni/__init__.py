"""underlay: CNI plugins that put pods directly on the node's network."""

__version__ = "0.1.0"


def version_info():
    """underlay's version and build, as VERSION and the about line report them."""
    try:
        from cni._build import BUILD  # written by build/build.sh into frozen bundles
    except ImportError:
        BUILD = "source"
    return {"version": __version__, "build": BUILD}
