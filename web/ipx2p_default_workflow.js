// comfyui-ipx2p: a useful first graph where the frontend's built-in default cannot run.
//
// With no previous workflow to restore, the frontend loads its built-in text-to-image graph (Load Checkpoint,
// KSampler, ...). ComfyUI has those nodes; the standalone studio (`ipx2p studio`) does not, so the page would open
// on a "Some Nodes Are Missing" dialog. When none of that graph's nodes exist on this server, this extension loads
// the pack's one-node Edit Image example instead. In ComfyUI nothing changes.

import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const PACK = "comfyui-ipx2p";
const EXAMPLE = "ipx2p_sd15_edit_image";
// KSampler is in every frontend's built-in default (1.27: with Load Checkpoint; 1.58: with UNET/CLIP/VAE loaders).
const DEFAULT_GRAPH_MARKERS = ["KSampler"];

function registered(type) {
  return !!globalThis.LiteGraph?.registered_node_types?.[type];
}

// The built-in default graph, on a server that has none of its nodes except the image savers.
function unrunnableDefault(graph) {
  const types = (graph?.nodes ?? []).map((n) => n.type);
  if (!DEFAULT_GRAPH_MARKERS.every((t) => types.includes(t))) return false;
  return types.every((t) => !registered(t) || t === "SaveImage" || t === "PreviewImage" || t === "LoadImage");
}

app.registerExtension({
  name: "comfyui-ipx2p.DefaultWorkflow",

  async beforeConfigureGraph(graphData) {
    if (!unrunnableDefault(graphData)) return;
    try {
      const response = await api.fetchApi(`/workflow_templates/${PACK}/${EXAMPLE}.json`, { cache: "no-store" });
      if (!response.ok) return;
      const example = await response.json();
      if (!Array.isArray(example?.nodes) || !example.nodes.every((n) => registered(n.type) || n.type === "Note")) return;
      for (const key of Object.keys(graphData)) delete graphData[key];
      Object.assign(graphData, example);
    } catch (err) {
      console.warn("[ipx2p] could not load the default example workflow", err);
    }
  },
});
