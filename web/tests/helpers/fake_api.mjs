// Test double of ComfyUI's `api` (scripts/api.js): an EventTarget, like the real ComfyApi.
export const api = globalThis.__deepgen1Fake.api;
