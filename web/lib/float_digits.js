// DeepGen 1.0 front end: how many decimals a FLOAT widget must show so its values can be read.
// Pure module: no DOM, no ComfyUI imports (tested with `node --test web/tests/`).
// Why: Nodes 2.0's number widget is PrimeVue's InputNumber, which formats with Intl's default of at
// most 3 fraction digits unless the widget options carry `maxFractionDigits` (the front end passes
// widget options through as InputNumber props); so a learning rate of 1e-4 showed as "0".

import { NODE_CATEGORY } from "./events.js";

/** Intl's default, which Nodes 2.0's number widget uses when `maxFractionDigits` is unset. */
export const DEFAULT_FRACTION_DIGITS = 3;
/** Upper bound: Intl.NumberFormat rejects more than 20; float inputs never need more than this. */
export const MAX_FRACTION_DIGITS = 10;

/** Fraction digits of a number's shortest exact form: 1e-4 → 4, 1.25e-7 → 9, 0.5 → 1, 3 → 0. */
export function fractionDigits(value) {
  if (typeof value !== "number" || !Number.isFinite(value)) return 0;
  const [mantissa, exp = "0"] = String(Math.abs(value)).split("e");
  const frac = mantissa.split(".")[1]?.length ?? 0;
  return Math.max(0, frac - Number(exp));
}

/**
 * The `maxFractionDigits` a FLOAT input needs: enough for its default, step and round (ComfyUI's
 * `round` is the quantum values are rounded to), capped at MAX_FRACTION_DIGITS; null when the
 * front end's default of 3 already shows them.
 */
export function neededFractionDigits(spec) {
  if (!spec || typeof spec !== "object") return null;
  const digits = Math.max(...[spec.default, spec.step, spec.round].map(fractionDigits));
  return digits > DEFAULT_FRACTION_DIGITS ? Math.min(digits, MAX_FRACTION_DIGITS) : null;
}

/** True for a node definition (object_info entry) of this pack, recognised by its category. */
export function isDeepGenNodeDef(nodeData) {
  const cat = nodeData?.category;
  return typeof cat === "string" && (cat === NODE_CATEGORY || cat.startsWith(`${NODE_CATEGORY}/`));
}

/** `{inputName: digits}` for the FLOAT inputs of a node definition that need more than 3 decimals. */
export function floatDigitsByInput(nodeData) {
  const out = {};
  for (const group of ["required", "optional"]) {
    for (const [name, spec] of Object.entries(nodeData?.input?.[group] ?? {})) {
      if (!Array.isArray(spec) || spec[0] !== "FLOAT") continue;
      const digits = neededFractionDigits(spec[1]);
      if (digits !== null) out[name] = digits;
    }
  }
  return out;
}
