// Test double of ComfyUI's `app` (scripts/app.js): records registered extensions.
export const app = globalThis.__deepgen1Fake.app;
