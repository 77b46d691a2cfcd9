"""The web extensions (ComfyUI reads this folder as WEB_DIRECTORY); a package only so that a wheel ships it inside
ipx2p_standalone.studio and the studio finds it with importlib.resources. Nothing here is imported."""
