"""The standalone side of comfyui-ipx2p: command line, headless workflow runner and studio server."""
