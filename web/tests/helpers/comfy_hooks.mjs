// Module-resolution hooks for the extension tests: the extensions import ComfyUI's
// "../../scripts/app.js" and "../../scripts/api.js"; in tests those resolve to the fakes here.
const FAKES = {
  "/scripts/app.js": new URL("./fake_app.mjs", import.meta.url).href,
  "/scripts/api.js": new URL("./fake_api.mjs", import.meta.url).href,
};

export async function resolve(specifier, context, nextResolve) {
  for (const [suffix, url] of Object.entries(FAKES)) {
    if (specifier.endsWith(suffix) && specifier.startsWith("../../scripts/")) return { url, shortCircuit: true };
  }
  return nextResolve(specifier, context);
}
