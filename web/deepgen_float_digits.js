// DeepGen 1.0: FLOAT widgets of DeepGen nodes show as many decimals as their values need.
// Under Nodes 2.0 the number widget rounds to 3 decimals unless the widget's options carry
// `maxFractionDigits` (PrimeVue InputNumber prop), so the default learning rate 1e-4 read "0".
// The classic canvas formats with `options.precision` (from the step, here 5: "0.00010") and
// ignores this option; the stored value is unchanged either way.

import { app } from "../../scripts/app.js";
import { floatDigitsByInput, isDeepGenNodeDef } from "./lib/float_digits.js";

app.registerExtension({
  name: "DeepGen1.FloatDigits",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!isDeepGenNodeDef(nodeData)) return;
    const digits = floatDigitsByInput(nodeData);
    if (Object.keys(digits).length === 0) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      for (const w of this.widgets ?? []) {
        // Set on the options object itself: Nodes 2.0 reads the same object when it renders.
        if (w?.options && Object.hasOwn(digits, w.name)) w.options.maxFractionDigits = digits[w.name];
      }
      return r;
    };
  },
});
