// DeepGen 1.0 front end: the DOM side shared by the live charts on training nodes (loss, rewards): a DOM widget
// holding a toolbar, an inline SVG and a status line, which renders in the classic canvas and in Nodes 2.0.
// Layout: the root is a flex column that never widens its container (`contain: inline-size`; in Nodes 2.0 a
// long nowrap status line otherwise stretched the widget row far past the node), and the SVG's viewBox follows
// its laid-out size (ResizeObserver), so the chart fills the node's width.  No side effects at import.

import { fitChartSize } from "./chart_geometry.js";

const SVG_NS = "http://www.w3.org/2000/svg";
export const FALLBACK_SIZE = Object.freeze({ width: 320, height: 140 }); // before the first layout

export function el(tag, css, text) {
  const e = document.createElement(tag);
  if (css) e.style.cssText = css;
  if (text !== undefined) e.textContent = text;
  return e;
}

export function svg(tag, attrs) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs ?? {})) e.setAttribute(k, String(v));
  return e;
}

const raf = (fn) => (typeof globalThis.requestAnimationFrame === "function" ? globalThis.requestAnimationFrame(fn) : setTimeout(fn, 16));

/**
 * Adds the chart widget `name` to `node`: returns `{root, bar, chart, legend, status, widget, size, schedule}`.
 * `render(parts)` draws; `parts.schedule()` asks for a draw on the next frame (one per frame).
 */
export function mountChart(node, name, render, { waiting = "waiting for training to start…", minHeight = 200 } = {}) {
  // min-width:0 + contain:inline-size: the content never sets the width; height:100% fills the classic
  // canvas's DOM-widget box (in Nodes 2.0 the height is the content's).
  const root = el(
    "div",
    "display:flex;flex-direction:column;width:100%;height:100%;min-width:0;contain:inline-size;overflow:hidden;" +
      "box-sizing:border-box;font:11px/1.3 sans-serif;color:var(--input-text,#ddd);padding:2px 4px;",
  );
  const bar = el("div", "flex:none;display:flex;gap:10px;align-items:center;flex-wrap:wrap;margin-bottom:2px;");
  const legend = el("div", "display:flex;gap:8px;flex-wrap:wrap;");
  // The SVG takes the height the bar and status leave (140px when the node is tall enough).
  const chart = svg("svg", { viewBox: `0 0 ${FALLBACK_SIZE.width} ${FALLBACK_SIZE.height}` });
  chart.style.cssText = "display:block;flex:1 1 140px;width:100%;min-width:0;min-height:60px;";
  const status = el("div", "flex:none;min-width:0;opacity:0.85;white-space:nowrap;overflow:hidden;text-overflow:ellipsis;", waiting);
  root.appendChild(bar);
  root.appendChild(chart);
  root.appendChild(status);
  const parts = { root, bar, chart, legend, status, widget: null, size: { ...FALLBACK_SIZE }, pending: false };
  parts.schedule = () => {
    if (parts.pending) return;
    parts.pending = true;
    raf(() => {
      parts.pending = false;
      render(parts);
    });
  };
  if (typeof globalThis.ResizeObserver === "function") {
    // Redraw at the SVG's laid-out size (CSS px, unaffected by the canvas zoom's transform).
    new globalThis.ResizeObserver(([entry]) => {
      const next = fitChartSize(entry.contentRect.width, entry.contentRect.height, parts.size);
      if (next.width === parts.size.width && next.height === parts.size.height) return;
      parts.size = next;
      parts.schedule();
    }).observe(chart);
  }
  if (typeof node.addDOMWidget === "function") {
    parts.widget = node.addDOMWidget(name, name, root, {
      serialize: false, // display only: keep it out of the API prompt
      hideOnZoom: false,
      getValue: () => "",
      setValue: () => {},
      getMinHeight: () => minHeight,
    });
    if (parts.widget) parts.widget.serialize = false; // ...and out of the workflow's widgets_values
  }
  return parts;
}

/** SVG elements of a view's frame, grid lines and tick labels (`view.rightTicks`: a second axis on the right). */
export function axisItems(view) {
  const { plot } = view;
  const items = [svg("rect", { x: plot.x0, y: plot.y0, width: plot.x1 - plot.x0, height: plot.y1 - plot.y0, fill: "none", stroke: "currentColor", "stroke-opacity": 0.25 })];
  const label = (attrs, text) => {
    const t = svg("text", { "font-size": 9, fill: "currentColor", ...attrs });
    t.textContent = text;
    return t;
  };
  for (const t of view.yTicks) {
    items.push(svg("line", { x1: plot.x0, x2: plot.x1, y1: t.y, y2: t.y, stroke: "currentColor", "stroke-opacity": 0.1 }));
    items.push(label({ x: plot.x0 - 3, y: t.y + 3, "text-anchor": "end" }, t.label));
  }
  for (const t of view.rightTicks ?? []) {
    items.push(label({ x: plot.x1 + 3, y: t.y + 3, "text-anchor": "start", "fill-opacity": 0.7 }, t.label));
  }
  for (const t of view.xTicks) items.push(label({ x: t.x, y: plot.y1 + 12, "text-anchor": "middle" }, t.label));
  return items;
}

/** Draw `items` into the chart at the current size and fill the legend and status line. */
export function paint(parts, view, items, legendItems) {
  parts.chart.setAttribute("viewBox", `0 0 ${view.width} ${view.height}`);
  parts.chart.replaceChildren(...axisItems(view), ...items);
  parts.legend.replaceChildren(...legendItems);
  parts.status.textContent = view.status;
  parts.status.title = view.status;
}
