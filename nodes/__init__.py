"""The node classes (ComfyUI V1 API). Installed standalone as the package ``ipx2p_nodes``; inside ComfyUI it is the
``nodes`` sub-package of the pack (never a top-level ``nodes``, which is ComfyUI's own module)."""

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
