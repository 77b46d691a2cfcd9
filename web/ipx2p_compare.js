// comfyui-ipx2p: the before/after view of the "Compare Before/After (IP2P)" node (IPX2PCompare).
//
// The node writes both images to the temp folder and reports them as ui outputs `ipx2p_before` / `ipx2p_after`.
// This widget draws the edit over the input: the input shows left of a divider, the edit right of it. Drag across
// the image (or click) to move the divider; with a batch, the arrows under the image pick the pair.

import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

export const COMPARE_NODE = "IPX2PCompare";
export const COMPARE_WIDGET = "ipx2p_compare";
const MIN_HEIGHT = 180;
const MARGIN = 10;
const CAPTION = 20;

function imageUrl(ref) {
  const params = new URLSearchParams({ filename: ref.filename, type: ref.type ?? "temp", subfolder: ref.subfolder ?? "" });
  return api.apiURL(`/view?${params}`);
}

function loadImage(ref, onload) {
  const img = new Image();
  img.onload = onload;
  img.onerror = () => console.warn(`[ipx2p] compare: could not load ${ref.filename}`);
  img.src = imageUrl(ref);
  return img;
}

// The rectangle (node coordinates) that an image of size iw x ih fills inside the box, keeping its aspect.
function fit(box, iw, ih) {
  if (!iw || !ih) return box;
  const s = Math.min(box.w / iw, box.h / ih);
  const w = iw * s;
  const h = ih * s;
  return { x: box.x + (box.w - w) / 2, y: box.y + (box.h - h) / 2, w, h };
}

function makeCompare(node) {
  const view = {
    name: COMPARE_WIDGET,
    type: "ipx2p_compare",
    value: null,
    serialize: false,
    options: { serialize: false },
    split: 0.5, // the divider, 0 = all edit, 1 = all input
    index: 0, // which pair of a batch
    pairs: [], // [{before: Image, after: Image}]
    dragging: false,
    imageRect: null, // where the images were drawn last (node coordinates)
    arrows: null,

    computeLayoutSize() {
      return { minHeight: MIN_HEIGHT, minWidth: 200 };
    },

    // Draw again: the canvas (classic) or this widget's own canvas (Nodes 2.0 draws a canvas widget on a canvas of
    // its own and sets triggerDraw, the frontend's hook for asking it to redraw).
    redraw() {
      node.setDirtyCanvas?.(true, true);
      this.triggerDraw?.();
    },

    setImages(before, after) {
      const redraw = () => this.redraw();
      const befores = before.map((ref) => loadImage(ref, redraw));
      this.pairs = after.map((ref, i) => ({ after: loadImage(ref, redraw), before: befores[Math.min(i, befores.length - 1)] }));
      this.index = Math.min(this.index, Math.max(0, this.pairs.length - 1));
      redraw();
    },

    ready() {
      const p = this.pairs[this.index];
      return !!(p && p.before?.complete && p.before.naturalWidth && p.after?.complete && p.after.naturalWidth);
    },

    draw(ctx, _node, width, y) {
      const lg = globalThis.LiteGraph ?? {};
      const height = this.computedHeight ?? MIN_HEIGHT;
      const box = { x: MARGIN, y: y + 4, w: Math.max(10, width - 2 * MARGIN), h: Math.max(10, height - CAPTION - 8) };
      ctx.save();
      ctx.fillStyle = lg.WIDGET_BGCOLOR ?? "#222";
      ctx.fillRect(box.x, box.y, box.w, box.h);
      ctx.font = "11px Arial, sans-serif";
      ctx.textBaseline = "middle";
      const dim = lg.WIDGET_SECONDARY_TEXT_COLOR ?? "#999";
      const fg = lg.WIDGET_TEXT_COLOR ?? "#ddd";
      const pair = this.pairs[this.index];

      if (!pair || !this.ready()) {
        ctx.fillStyle = dim;
        ctx.textAlign = "center";
        ctx.fillText(pair ? "loading…" : "Queue the workflow to compare before / after", box.x + box.w / 2, box.y + box.h / 2);
        this.imageRect = null;
      } else {
        const r = fit(box, pair.after.naturalWidth, pair.after.naturalHeight);
        this.imageRect = r;
        const cut = r.x + r.w * this.split;
        // the edit everywhere, then the input clipped to the left of the divider (stretched to the edit's frame)
        ctx.drawImage(pair.after, r.x, r.y, r.w, r.h);
        ctx.save();
        ctx.beginPath();
        ctx.rect(r.x, r.y, cut - r.x, r.h);
        ctx.clip();
        ctx.drawImage(pair.before, r.x, r.y, r.w, r.h);
        ctx.restore();
        // divider and handle
        ctx.strokeStyle = "#fff";
        ctx.lineWidth = 2;
        ctx.beginPath();
        ctx.moveTo(cut, r.y);
        ctx.lineTo(cut, r.y + r.h);
        ctx.stroke();
        ctx.fillStyle = "rgba(0,0,0,0.55)";
        ctx.beginPath();
        ctx.arc(cut, r.y + r.h / 2, 9, 0, Math.PI * 2);
        ctx.fill();
        ctx.stroke();
        ctx.fillStyle = "#fff";
        ctx.textAlign = "center";
        ctx.fillText("⇔", cut, r.y + r.h / 2 + 1);
        // labels
        const label = (text, x, align) => {
          ctx.font = "11px Arial, sans-serif";
          const w = ctx.measureText(text).width + 8;
          const lx = align === "left" ? x : x - w;
          ctx.fillStyle = "rgba(0,0,0,0.55)";
          ctx.fillRect(lx, r.y + 4, w, 16);
          ctx.fillStyle = "#fff";
          ctx.textAlign = "left";
          ctx.fillText(text, lx + 4, r.y + 12);
        };
        if (this.split > 0.12) label("before", r.x + 4, "left");
        if (this.split < 0.88) label("after", r.x + r.w - 4, "right");
      }

      // caption: hint, and the pair picker for batches
      const cy = box.y + box.h + CAPTION / 2 + 2;
      ctx.font = "11px Arial, sans-serif";
      ctx.fillStyle = dim;
      ctx.textAlign = "left";
      ctx.fillText(pair ? "drag across the image to compare" : "", box.x, cy);
      this.arrows = null;
      if (this.pairs.length > 1) {
        const text = `${this.index + 1} / ${this.pairs.length}`;
        const right = box.x + box.w;
        ctx.fillStyle = fg;
        ctx.textAlign = "center";
        ctx.fillText("◀", right - 62, cy);
        ctx.fillText(text, right - 35, cy);
        ctx.fillText("▶", right - 8, cy);
        this.arrows = { y: cy, prev: right - 62, next: right - 8 };
      }
      ctx.restore();
    },

    setSplit(x) {
      const r = this.imageRect;
      if (!r) return;
      this.split = Math.min(1, Math.max(0, (x - r.x) / r.w));
      this.redraw();
    },

    mouse(event, pos) {
      const type = event.type ?? "";
      if (type.endsWith("down")) {
        const a = this.arrows;
        if (a && Math.abs(pos[1] - a.y) < 10) {
          const n = this.pairs.length;
          if (Math.abs(pos[0] - a.prev) < 12) this.index = (this.index + n - 1) % n;
          else if (Math.abs(pos[0] - a.next) < 12) this.index = (this.index + 1) % n;
          this.redraw();
          return true;
        }
        const r = this.imageRect;
        if (!r || pos[1] < r.y || pos[1] > r.y + r.h) return false;
        this.dragging = true;
        this.setSplit(pos[0]);
        return true;
      }
      if (!this.dragging) return false;
      // The release only ends the drag: Nodes 2.0 reports it in node coordinates, not this widget's (the moves
      // before it already put the divider where the pointer is).
      if (type.endsWith("up")) this.dragging = false;
      else this.setSplit(pos[0]);
      return true;
    },
  };
  return view;
}

app.registerExtension({
  name: "comfyui-ipx2p.Compare",

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== COMPARE_NODE) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      onExecuted?.apply(this, arguments);
      const view = this.widgets?.find((w) => w.name === COMPARE_WIDGET);
      if (view && output?.ipx2p_after?.length) view.setImages(output.ipx2p_before ?? [], output.ipx2p_after);
    };
  },

  nodeCreated(node) {
    if (node?.comfyClass !== COMPARE_NODE || node.widgets?.some((w) => w.name === COMPARE_WIDGET)) return;
    node.addCustomWidget(makeCompare(node));
    node.setSize([Math.max(node.size[0], 360), Math.max(node.size[1], 320)]);
  },
});
