// A minimal DOM for the extension tests: just what the DeepGen extensions use.
export class FakeElement {
  constructor(tag, ns = null) {
    this.tagName = tag.toUpperCase();
    this.namespaceURI = ns;
    this.children = [];
    this.attributes = {};
    this.style = { cssText: "" };
    this.listeners = {};
    this.parentNode = null;
    this._text = "";
    this.title = "";
  }
  setAttribute(k, v) {
    this.attributes[k] = String(v);
  }
  getAttribute(k) {
    return this.attributes[k] ?? null;
  }
  appendChild(child) {
    child.parentNode = this;
    this.children.push(child);
    return child;
  }
  replaceChildren(...children) {
    for (const c of children) c.parentNode = this;
    this.children = children;
    this._text = "";
  }
  addEventListener(type, fn) {
    (this.listeners[type] ??= []).push(fn);
  }
  dispatch(type) {
    for (const fn of this.listeners[type] ?? []) fn({ type, target: this });
  }
  get textContent() {
    return this._text + this.children.map((c) => c.textContent).join("");
  }
  set textContent(v) {
    this.children = [];
    this._text = String(v);
  }
  /** All descendants with this tag name (case-insensitive). */
  findAll(tag) {
    const out = [];
    const walk = (e) => {
      for (const c of e.children) {
        if (c.tagName === tag.toUpperCase()) out.push(c);
        walk(c);
      }
    };
    walk(this);
    return out;
  }
}

/** ResizeObserver double: `FakeResizeObserver.resize(el, w, h)` calls the observers of `el`. */
export class FakeResizeObserver {
  static all = [];
  constructor(callback) {
    this.callback = callback;
    this.targets = [];
    FakeResizeObserver.all.push(this);
  }
  observe(el) {
    this.targets.push(el);
  }
  static resize(el, width, height) {
    for (const o of FakeResizeObserver.all) {
      if (o.targets.includes(el)) o.callback([{ target: el, contentRect: { width, height } }]);
    }
  }
}

export function installDom() {
  globalThis.ResizeObserver = FakeResizeObserver;
  globalThis.document = {
    createElement: (tag) => new FakeElement(tag),
    createElementNS: (ns, tag) => new FakeElement(tag, ns),
  };
  globalThis.requestAnimationFrame = (fn) => {
    fn(0);
    return 1;
  };
}
