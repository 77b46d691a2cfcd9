"""The one place nodes reach the engine from.

Inside ComfyUI (and whenever the pack folder is loaded as a package) the engine is the pack's own ``ipx2p_core``
sub-package, found relatively. When the nodes are installed as the top-level package ``ipx2p_nodes`` (pip install),
the relative import has no parent package and the installed top-level ``ipx2p_core`` is used instead.
"""

try:
    from .. import ipx2p_core as core
    from ..ipx2p_core import atomic_files, number_lists, paths  # noqa: F401 - loaded so that core.paths etc. resolve
except ImportError:
    import ipx2p_core as core  # type: ignore[no-redef]
    from ipx2p_core import atomic_files, number_lists, paths  # type: ignore[no-redef]  # noqa: F401

__all__ = ["atomic_files", "core", "number_lists", "paths"]
