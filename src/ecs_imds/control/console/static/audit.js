// The audit log: the newest changes made through this server's control plane (who, what,
// which instance, when), optionally only those of one instance.

import { call } from "./api.js";
import { debounce, h, instanceLink, notice } from "./dom.js";

export function auditPage(params) {
  const instance = h("input", { type: "search", name: "instance", placeholder: "instance id", value: params.get("instance") || "", "aria-label": "instance", spellcheck: "false" });
  const body = h("tbody");
  const message = notice();
  const el = h("section", { class: "page audit-page" },
    h("h1", {}, "Audit"),
    h("form", { class: "filters", onsubmit: (e) => e.preventDefault() }, instance),
    message.el,
    h("div", { class: "scroll" }, h("table", { class: "audit" },
      h("thead", {}, h("tr", {}, ["Time (UTC)", "Who", "Action", "Target", "Details"]
        .map((name) => h("th", { scope: "col" }, name)))), body)));

  const STANDARD = new Set(["time", "actor", "action", "target"]);

  function row(record) {
    const details = Object.entries(record).filter(([key]) => !STANDARD.has(key))
      .map(([key, value]) => `${key}: ${typeof value === "string" ? value : JSON.stringify(value)}`);
    const target = String(record.target || "");
    return h("tr", {},
      h("td", { "data-label": "Time" }, record.time),
      h("td", { "data-label": "Who" }, record.actor),
      h("td", { "data-label": "Action" }, record.action),
      h("td", { "data-label": "Target" }, target.startsWith("i-") ? instanceLink(target) : target),
      h("td", { "data-label": "Details" }, details.join("; ")));
  }

  async function refresh() {
    const id = instance.value.trim();
    let data;
    try {
      ({ data } = await call("GET", "/v1/console/audit", { params: { instance: id, limit: 200 } }));
    } catch (err) {
      message.show("error", err.message);
      return;
    }
    if (id !== instance.value.trim()) return;
    message.clear();
    if (!data.records.length) message.show("ok", id ? `No changes to ${id} in the recent log.` : "No changes recorded yet.");
    body.replaceChildren(...data.records.map(row));
  }

  instance.addEventListener("input", debounce(() => {
    const id = instance.value.trim();
    history.replaceState(null, "", id ? `#/audit?instance=${encodeURIComponent(id)}` : "#/audit");
    refresh();
  }, 200));

  return { el, refresh };
}
