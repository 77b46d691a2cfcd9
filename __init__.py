"""comfyui-ipx2p as a ComfyUI custom node pack: InstructPix2Pix editing nodes (category InstructPix2Pix/...).

ComfyUI imports this file by path, so everything inside the pack uses relative imports.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
