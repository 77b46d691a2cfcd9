"""comfyui-ipx2p as a ComfyUI custom node pack: InstructPix2Pix editing nodes (category InstructPix2Pix/...).

ComfyUI imports this file by path, so everything inside the pack uses relative imports.
"""

if __package__:
    from pathlib import Path

    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
    from .nodes.host import running_in_comfyui

    WEB_DIRECTORY = "./web"

    if running_in_comfyui():  # the example workflows' images, so the templates run on the first Queue
        from .nodes.comfy_host import copy_example_inputs

        copy_example_inputs(Path(__file__).parent / "example_workflows" / "input")

    __all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
# else: imported with no parent package. pytest does this when the clone's folder name is no Python identifier (the
# README's `comfyui-ipx2p`): the repository root holds this __init__.py, so pytest imports it as a plain module
# `__init__` while collecting tests/. There is nothing to register then.
