// comfyui-ipx2p: a two-axis guidance pad on the Dual-Guidance Sampler and Edit Image nodes.
//
// Drag the point: left/right sets text guidance (how strongly the instruction is followed), down/up sets image
// guidance (how closely the input is kept). The pad and the two number widgets stay in sync both ways: the pad
// reads the widgets every time it draws and writes through them (rounding, limits and callbacks included).
// The node's context menu adds guidance presets and, when the graph has a Guidance Sweep node, every pair it tries
// (to copy the best cell of its contact sheet). The pad is not serialized: workflows keep only the two numbers.
// The default guidance (a ring on the pad, the "Defaults" preset) is the node's own widget default from
// /object_info, which the server reads from the engine's defaults: no number is repeated here.

import { app } from "../../scripts/app.js";

export const PAD_NODES = ["IPX2PSampler", "IPX2PEditImage"];
export const PAD_WIDGET = "ipx2p_guidance_pad";
const TEXT = "text_guidance";
const IMAGE = "image_guidance";

// The part of each range the pad shows; the number widgets still accept their full range (points outside are
// drawn on the edge with an arrow).
const VIEW = { text: [0, 15], image: [0, 4] };

// The node definition's defaults for the two guidance inputs, or null when it does not give both.
export function guidanceDefaults(nodeData) {
  const inputs = { ...nodeData?.input?.required, ...nodeData?.input?.optional };
  const text = inputs[TEXT]?.[1]?.default;
  const image = inputs[IMAGE]?.[1]?.default;
  return Number.isFinite(text) && Number.isFinite(image) ? { text, image } : null;
}

// Presets around the defaults; the fixed pairs are starting points worth trying, not defaults.
function presets(defaults) {
  return [
    ["Subtle: stay close to the photo", 5.0, 2.0],
    ...(defaults ? [["Defaults (InstructPix2Pix)", defaults.text, defaults.image]] : []),
    ["Strong: follow the instruction", 10.0, 1.2],
    ["CosXL Edit", 5.0, 1.5],
    ...(defaults ? [["Fastest (image guidance 1)", defaults.text, 1.0]] : []),
  ];
}

const SWEEP_NODE = "IPX2PGuidanceSweep";
const MAX_SWEEP_ITEMS = 64;

const PAD_HEIGHT = 168;
const MARGIN = 15;
const HEADER = 18;
const FOOTER = 16;

const LG = () => globalThis.LiteGraph ?? {};

function widget(node, name) {
  return node.widgets?.find((w) => w.name === name);
}

function linked(node, name) {
  return !!node.inputs?.some((i) => i.widget?.name === name && i.link != null);
}

function decimals(w, fallback) {
  const o = w?.options ?? {};
  if (Number.isFinite(o.precision)) return o.precision;
  const step = o.round || o.step2 || fallback;
  return Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
}

// Snap to the widget's own step (what its arrows move by: 0.1 for text, 0.05 for image guidance).
function quantize(w, value, fallbackStep) {
  const o = w?.options ?? {};
  const step = o.step2 || o.round || fallbackStep;
  let v = Math.round(value / step) * step;
  v = Math.min(o.max ?? Infinity, Math.max(o.min ?? -Infinity, v));
  return Number(v.toFixed(decimals(w, fallbackStep)));
}

// Set a number widget as a user would: value, the widget's own callback (rounding), the node's change hook.
export function setWidgetValue(node, w, value) {
  if (!w || w.value === value) return;
  if (typeof w.setValue === "function") {
    w.setValue(value, { e: undefined, node, canvas: app.canvas });
    redrawPad(node);
    return;
  }
  const old = w.value;
  w.value = value;
  try {
    w.callback?.call(w, w.value, app.canvas, node);
  } catch (err) {
    console.warn("[ipx2p] widget callback failed", err);
  }
  node.onWidgetChanged?.(w.name, w.value, old, w);
  if (node.graph) node.graph._version++;
  redrawPad(node);
}

// Draw the pad again: the canvas (classic) and, in Nodes 2.0, the pad's own canvas through triggerDraw, the hook
// the frontend sets on a canvas-drawn widget it shows in a Vue node.
function redrawPad(node) {
  node.setDirtyCanvas?.(true, true);
  widget(node, PAD_WIDGET)?.triggerDraw?.();
}

export function setGuidance(node, text, image) {
  if (text != null && !linked(node, TEXT)) setWidgetValue(node, widget(node, TEXT), quantize(widget(node, TEXT), text, 0.1));
  if (image != null && !linked(node, IMAGE)) setWidgetValue(node, widget(node, IMAGE), quantize(widget(node, IMAGE), image, 0.05));
}

// "5, 7.5, 10" → [5, 7.5, 10], as the sweep node reads its lists (commas, spaces or semicolons).
export function parseScales(text) {
  return String(text ?? "")
    .split(/[,;\s]+/)
    .filter((t) => t.trim())
    .map(Number)
    .filter(Number.isFinite);
}

// Every (text, image) pair of the Guidance Sweep nodes in the graph, to copy a good cell onto this node.
function sweepPairs(node) {
  const pairs = [];
  for (const sweep of node.graph?.nodes ?? []) {
    if (sweep.comfyClass !== SWEEP_NODE) continue;
    const texts = parseScales(widget(sweep, "text_guidances")?.value);
    const images = parseScales(widget(sweep, "image_guidances")?.value);
    for (const text of texts) for (const image of images) pairs.push([sweep, text, image]);
  }
  return pairs.slice(0, MAX_SWEEP_ITEMS);
}

function padRect(width, y, height) {
  return { x: MARGIN, y: y + HEADER, w: Math.max(20, width - 2 * MARGIN), h: Math.max(20, height - HEADER - FOOTER - 4) };
}

const toX = (r, t) => r.x + ((t - VIEW.text[0]) / (VIEW.text[1] - VIEW.text[0])) * r.w;
const toY = (r, i) => r.y + r.h - ((i - VIEW.image[0]) / (VIEW.image[1] - VIEW.image[0])) * r.h;
const fromX = (r, x) => VIEW.text[0] + ((x - r.x) / r.w) * (VIEW.text[1] - VIEW.text[0]);
const fromY = (r, y) => VIEW.image[0] + ((r.y + r.h - y) / r.h) * (VIEW.image[1] - VIEW.image[0]);
const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));

function makePad(node) {
  const pad = {
    name: PAD_WIDGET,
    type: "ipx2p_guidance_pad",
    value: null,
    serialize: false,
    options: { serialize: false },
    dragging: false,
    last: null, // the rectangle drawn last (node coordinates), for tests and hit checks

    computeSize(width) {
      return [width ?? node.size[0], PAD_HEIGHT];
    },

    values() {
      return { text: Number(widget(node, TEXT)?.value), image: Number(widget(node, IMAGE)?.value) };
    },

    // Where the point is drawn for the current values, in node coordinates.
    point() {
      const r = this.last ?? padRect(node.size[0], this.y ?? 0, PAD_HEIGHT);
      const { text, image } = this.values();
      return [toX(r, clamp(text, ...VIEW.text)), toY(r, clamp(image, ...VIEW.image))];
    },

    draw(ctx, _node, width, y, _h, lowQuality) {
      const lg = LG();
      const r = padRect(width, y, this.computedHeight ?? PAD_HEIGHT);
      this.last = r;
      const { text, image } = this.values();
      const textLinked = linked(node, TEXT);
      const imageLinked = linked(node, IMAGE);
      const fg = lg.WIDGET_TEXT_COLOR ?? "#ddd";
      const dim = lg.WIDGET_SECONDARY_TEXT_COLOR ?? "#999";
      ctx.save();

      // header: title and the current values
      ctx.font = "11px Arial, sans-serif";
      ctx.textBaseline = "middle";
      ctx.textAlign = "left";
      ctx.fillStyle = dim;
      ctx.fillText("guidance pad", r.x, y + HEADER / 2);
      ctx.textAlign = "right";
      ctx.fillStyle = fg;
      const fmt = (v, w) => (Number.isFinite(v) ? v.toFixed(Math.max(1, decimals(widget(node, w), 0.1))) : "?");
      ctx.fillText(`text ${fmt(text, TEXT)}${textLinked ? " (input)" : ""}  ·  image ${fmt(image, IMAGE)}${imageLinked ? " (input)" : ""}`,
        r.x + r.w, y + HEADER / 2);

      // the pad: a tint from "keep the photo" (top-left) to "strong edit" (bottom-right)
      const grad = ctx.createLinearGradient(r.x, r.y, r.x + r.w, r.y + r.h);
      grad.addColorStop(0, "rgba(70,110,170,0.35)");
      grad.addColorStop(1, "rgba(190,110,60,0.35)");
      ctx.fillStyle = lg.WIDGET_BGCOLOR ?? "#222";
      ctx.fillRect(r.x, r.y, r.w, r.h);
      ctx.fillStyle = grad;
      ctx.fillRect(r.x, r.y, r.w, r.h);
      ctx.strokeStyle = lg.WIDGET_OUTLINE_COLOR ?? "#666";
      ctx.strokeRect(r.x, r.y, r.w, r.h);

      if (!lowQuality) {
        // grid: text every 2.5, image every 0.5; image guidance 1 (one UNet pass fewer) highlighted
        ctx.lineWidth = 1;
        ctx.strokeStyle = "rgba(255,255,255,0.07)";
        ctx.beginPath();
        for (let t = VIEW.text[0] + 2.5; t < VIEW.text[1]; t += 2.5) {
          ctx.moveTo(toX(r, t), r.y);
          ctx.lineTo(toX(r, t), r.y + r.h);
        }
        for (let i = VIEW.image[0] + 0.5; i < VIEW.image[1]; i += 0.5) {
          ctx.moveTo(r.x, toY(r, i));
          ctx.lineTo(r.x + r.w, toY(r, i));
        }
        ctx.stroke();
        ctx.setLineDash([3, 3]);
        ctx.strokeStyle = "rgba(255,255,255,0.22)";
        ctx.beginPath();
        ctx.moveTo(r.x, toY(r, 1));
        ctx.lineTo(r.x + r.w, toY(r, 1));
        ctx.stroke();
        ctx.setLineDash([]);

        // direction hints
        ctx.font = "10px Arial, sans-serif";
        ctx.fillStyle = dim;
        ctx.textAlign = "left";
        ctx.textBaseline = "top";
        ctx.fillText("↑ image: keep more of the input", r.x + 4, r.y + 3);
        ctx.textBaseline = "bottom";
        ctx.fillText("↓ freer", r.x + 4, r.y + r.h - 2);
        ctx.textAlign = "right";
        ctx.fillText("1 = fastest", r.x + r.w - 4, toY(r, 1) - 1);
        ctx.textBaseline = "middle";
        ctx.textAlign = "left";
        ctx.fillText("← weaker edit", r.x, r.y + r.h + FOOTER / 2 + 1);
        ctx.textAlign = "center";
        ctx.fillText("text guidance", r.x + r.w / 2, r.y + r.h + FOOTER / 2 + 1);
        ctx.textAlign = "right";
        ctx.fillText("follow the instruction →", r.x + r.w, r.y + r.h + FOOTER / 2 + 1);

        // the defaults, as a faint ring
        const defaults = node.ipx2pGuidanceDefaults;
        if (defaults) {
          ctx.strokeStyle = "rgba(255,255,255,0.35)";
          ctx.beginPath();
          ctx.arc(toX(r, defaults.text), toY(r, defaults.image), 4, 0, Math.PI * 2);
          ctx.stroke();
        }
      }

      // the point, with crosshairs; clamped to the edge (with an arrow) when a value is outside the view
      if (Number.isFinite(text) && Number.isFinite(image)) {
        const [px, py] = [toX(r, clamp(text, ...VIEW.text)), toY(r, clamp(image, ...VIEW.image))];
        ctx.strokeStyle = "rgba(255,255,255,0.45)";
        ctx.beginPath();
        ctx.moveTo(px, r.y);
        ctx.lineTo(px, r.y + r.h);
        ctx.moveTo(r.x, py);
        ctx.lineTo(r.x + r.w, py);
        ctx.stroke();
        ctx.fillStyle = textLinked && imageLinked ? "#777" : "#f2b134";
        ctx.strokeStyle = "#fff";
        ctx.lineWidth = 2;
        ctx.beginPath();
        ctx.arc(px, py, this.dragging ? 7 : 6, 0, Math.PI * 2);
        ctx.fill();
        ctx.stroke();
        const out = [text > VIEW.text[1] ? "→" : text < VIEW.text[0] ? "←" : "", image > VIEW.image[1] ? "↑" : image < VIEW.image[0] ? "↓" : ""].join("");
        if (out) {
          ctx.fillStyle = fg;
          ctx.font = "bold 11px Arial, sans-serif";
          ctx.textAlign = px > r.x + r.w / 2 ? "right" : "left";
          ctx.textBaseline = "middle";
          ctx.fillText(out, px + (px > r.x + r.w / 2 ? -10 : 10), py);
        }
      }
      ctx.restore();
    },

    mouse(event, pos, _node) {
      const type = event.type ?? "";
      const r = this.last;
      if (!r) return false;
      if (type.endsWith("down")) {
        if (pos[0] < r.x - 4 || pos[0] > r.x + r.w + 4 || pos[1] < r.y - 4 || pos[1] > r.y + r.h + 4) return false;
        this.dragging = true;
      } else if (type.endsWith("up")) {
        // The release only ends the drag: Nodes 2.0 reports it in node coordinates, not this widget's.
        const was = this.dragging;
        this.dragging = false;
        return was;
      } else if (!this.dragging) {
        return false;
      }
      const text = fromX(r, clamp(pos[0], r.x, r.x + r.w));
      const image = fromY(r, clamp(pos[1], r.y, r.y + r.h));
      setGuidance(node, text, image);
      return true;
    },
  };
  return pad;
}

function addPad(node) {
  if (!widget(node, TEXT) || !widget(node, IMAGE) || widget(node, PAD_WIDGET)) return;
  node.addCustomWidget(makePad(node));
  // A value typed or stepped in a number widget moves the point (in Nodes 2.0 the pad has no canvas redraw to
  // ride on): chain the widgets' own callbacks.
  for (const name of [TEXT, IMAGE]) {
    const w = widget(node, name);
    const callback = w.callback;
    w.callback = function () {
      const result = callback?.apply(this, arguments);
      widget(node, PAD_WIDGET)?.triggerDraw?.();
      return result;
    };
  }
  const size = node.computeSize();
  node.setSize([Math.max(node.size[0], size[0], 300), Math.max(node.size[1], size[1])]);
}

// The node's menu entries: guidance presets and, with a Guidance Sweep node in the graph, its pairs.
function menuItems(node) {
  // has_submenu: litegraph draws the arrow, and Nodes 2.0's menu (which converts these entries) shows a submenu
  const items = [{
    content: "Guidance preset",
    has_submenu: true,
    submenu: {
      options: presets(node.ipx2pGuidanceDefaults).map(([label, text, image]) => ({
        content: `${label} (text ${text}, image ${image})`,
        callback: () => setGuidance(node, text, image),
      })),
    },
  }];
  const pairs = sweepPairs(node);
  if (pairs.length) {
    const many = new Set(pairs.map(([sweep]) => sweep.id)).size > 1;
    items.push({
      content: "Guidance from sweep",
      has_submenu: true,
      submenu: {
        options: pairs.map(([sweep, text, image]) => ({
          content: `${many ? `#${sweep.id}: ` : ""}text ${text} · image ${image}`,
          callback: () => setGuidance(node, text, image),
        })),
      },
    });
  }
  return items;
}

// Frontends from 1.28 on have an extension hook for node menus (getNodeMenuItems, collected by
// app.collectNodeMenuItems); older ones (ComfyUI 0.3.64's 1.27.10) only the node's getExtraMenuOptions.
const HAS_MENU_HOOK = typeof app.collectNodeMenuItems === "function";

app.registerExtension({
  name: "comfyui-ipx2p.GuidancePad",

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!PAD_NODES.includes(nodeData?.name)) return;
    nodeType.prototype.ipx2pGuidanceDefaults = guidanceDefaults(nodeData);
    if (HAS_MENU_HOOK) return;
    const previous = nodeType.prototype.getExtraMenuOptions;
    nodeType.prototype.getExtraMenuOptions = function (canvas, options) {
      const result = previous?.apply(this, arguments);
      options.push(null, ...menuItems(this));
      return result;
    };
  },

  getNodeMenuItems(node) {
    return PAD_NODES.includes(node?.comfyClass) ? [null, ...menuItems(node)] : [];
  },

  nodeCreated(node) {
    if (PAD_NODES.includes(node?.comfyClass)) addPad(node);
  },
});
