// Building the page from data without ever parsing data as HTML: every value becomes a
// text node or an attribute, so nothing an instance's metadata holds can run as script.

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "class") el.className = value;
    else if (value === true) el.setAttribute(name, "");
    else el.setAttribute(name, String(value));
  }
  add(el, children);
  return el;
}

export function add(el, children) {
  for (const child of [children].flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export const number = (n) => Number(n).toLocaleString("en-US");

export const MODES = {
  normal: "normal",
  "security-hardening": "security hardening",
  "endpoint-disabled": "endpoint disabled",
  invalid: "cannot be served",
};

export function modeBadge(mode) {
  return h("span", { class: `mode mode-${mode}`, "data-mode": mode }, MODES[mode] || mode);
}

export const REASONS = {
  200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
  405: "Method Not Allowed", 429: "Too Many Requests", 500: "Internal Server Error",
};

export function statusBadge(status) {
  const kind = status === 200 ? "ok" : status >= 500 ? "fail" : "refused";
  return h("span", { class: `status status-${kind}`, "data-status": status },
    `${status} ${REASONS[status] || ""}`.trim());
}

export function instanceLink(id, text) {
  return h("a", { href: `#/instances/${encodeURIComponent(id)}` }, text || id);
}

// Calls `fn` once input has paused for `ms`.
export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

// A message line that can say how the last action went.
export function notice() {
  const el = h("p", { class: "notice", role: "status" });
  return {
    el,
    show(kind, text) {
      el.className = `notice notice-${kind}`;
      el.textContent = text;
    },
    clear() {
      el.className = "notice";
      el.textContent = "";
    },
  };
}
