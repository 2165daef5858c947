// One instance: what it is, its metadata tree exactly as the data plane serves it right now
// (after a token PUT, and with plain GETs), the bytes of any answer, and — with an admin
// token — its changes. The tree keeps what is open and selected across Live refreshes.

import { call } from "./api.js";
import { changePanel } from "./change.js";
import { h, modeBadge, notice, number, statusBadge } from "./dom.js";

const VIEWS = { "with-token": "With a token", "without-token": "Without a token" };

function parentOf(path) {
  const cut = path.lastIndexOf("/");
  return cut < 0 ? "" : path.slice(0, cut);
}

function nameOf(path) {
  return path.slice(path.lastIndexOf("/") + 1);
}

export function instancePage(id, session) {
  let data = null;
  let view = "with-token";
  let selected = "";
  const open = new Set(["", "meta-data"]);
  const message = notice();

  const title = h("h1", {}, id);
  const facts = h("dl", { class: "facts" });
  const lag = h("p", { class: "muted" });
  const tabs = h("div", { class: "tabs", role: "tablist" });
  const put = h("p", { class: "put" });
  const tree = h("ul", { class: "tree", role: "tree", "aria-label": "metadata tree" });
  const answer = h("div", { class: "answer", "aria-live": "polite" });
  const change = session["may-write"] ? changePanel(id, () => refresh()) : null;
  const audit = h("a", { href: `#/audit?instance=${encodeURIComponent(id)}` }, "its audit log");

  const el = h("section", { class: "page instance-page" },
    h("p", { class: "crumbs" }, h("a", { href: "#/fleet" }, "Fleet"), " › ", id),
    title, message.el, facts, lag,
    h("div", { class: "columns" },
      h("section", { class: "panel" }, h("h2", {}, "Metadata as served"), tabs, put, tree),
      h("section", { class: "panel" }, h("h2", {}, "Answer"), answer)),
    change ? change.el : h("p", { class: "readonly muted" },
      "Read-only token: this console can show the instance but not change it."),
    h("p", { class: "muted" }, "See ", audit, "."));

  function fact(name, ...value) {
    return [h("dt", {}, name), h("dd", {}, ...value)];
  }

  function showFacts() {
    const inst = data.instance;
    title.replaceChildren(id, " ", modeBadge(inst.mode));
    const tags = Object.entries(inst.tags).map(([k, v]) => h("span", { class: "chip" }, `${k}=${v}`));
    const cred = data.credentials;
    facts.replaceChildren(
      ...fact("Name", inst.name),
      ...fact("VPC", inst["vpc-id"]),
      ...fact("Addresses", inst.private.join(", ")),
      ...(inst.public.length ? fact("Public", inst.public.join(", ")) : []),
      ...fact("Placement", inst.placement
        ? `dedicated host ${inst.placement}` : h("span", { class: "muted" }, "no dedicated host")),
      ...fact("Access mode", modeBadge(inst.mode), ` token hop limit ${inst["hop-limit"]}`),
      ...fact("Tags", tags.length ? tags : h("span", { class: "muted" }, "none"),
        tags.length ? ` (${inst["tags-exposed"] ? "in metadata" : "not in metadata"})` : ""),
      ...fact("RAM role", inst.role || h("span", { class: "muted" }, "none"),
        cred ? h("div", { class: "muted" },
          `key ${cred["access-key-id"]}, expires ${cred.expiration}`) : null),
      ...fact("Spot reclaim", inst.spot ? h("span", { class: "warn" }, inst.spot)
        : h("span", { class: "muted" }, "none scheduled")),
      ...fact("Events", data.events.length
        ? data.events.map((e) => h("span", { class: "chip warn" }, `${e.EventType} ${e.EventCycleStatus}`))
        : h("span", { class: "muted" }, "none active")),
      ...fact("Revision", h("code", {}, data.etag)));
    if (!data.served) {
      lag.textContent = "This server's snapshot does not hold the instance: it is placed outside the server's scope, or was written a moment ago. Nothing is served to it here.";
    } else if (data.snapshot < data.revision) {
      lag.textContent = `The data plane serves snapshot ${data.snapshot}; the instance changed at ${data.revision}: the tree follows within a poll interval.`;
    } else {
      lag.textContent = `As served now, from snapshot ${number(data.snapshot)}.`;
    }
  }

  function showTabs() {
    tabs.replaceChildren(...Object.entries(VIEWS).map(([key, label]) =>
      h("button", { type: "button", role: "tab", "aria-selected": String(key === view),
        class: key === view ? "tab current" : "tab",
        onclick: () => { view = key; showTree(); } }, label)));
  }

  function answers(which) {
    return new Map((data[which] || []).map((a) => [a.path, a]));
  }

  function showTree() {
    showTabs();
    tree.replaceChildren();
    answer.replaceChildren();
    if (!data.served) return;
    const found = answers(view);
    const tokenPut = found.get("api/token");
    put.replaceChildren(...(tokenPut
      ? ["PUT /latest/api/token → ", statusBadge(tokenPut.status),
        tokenPut.status === 200 ? ` (hop limit ${data.instance["hop-limit"]}; the token is not shown)` : "",
        ", then every GET carries it."]
      : ["Plain GETs, no token header."]));
    const children = new Map();
    for (const a of found.values()) {
      if (a.path === "" || a.path === "api/token") continue;
      const parent = parentOf(a.path);
      if (!children.has(parent)) children.set(parent, []);
      children.get(parent).push(a);
    }
    const item = (a) => {
      const label = a.path === "" ? "/latest/" : nameOf(a.path) + (a.directory ? "/" : "");
      const mark = a.status === 200 ? (a.listed ? null : h("span", { class: "muted" }, " (not listed)"))
        : statusBadge(a.status);
      const node = h("button", { type: "button", class: a.path === selected ? "node current" : "node",
        "data-path": a.path, onclick: () => select(a.path) }, label);
      if (!a.directory) return h("li", { role: "treeitem" }, node, mark);
      const expanded = open.has(a.path);
      const caret = h("button", { type: "button", class: "caret", "aria-label": `open ${label}`,
        "aria-expanded": String(expanded), onclick: () => toggle(a.path) }, expanded ? "▾" : "▸");
      const kids = (children.get(a.path) || []).sort((x, y) => x.listed === y.listed ? 0 : x.listed ? -1 : 1);
      return h("li", { role: "treeitem", "aria-expanded": String(expanded) }, caret, node, mark,
        expanded && kids.length ? h("ul", { role: "group" }, kids.map(item)) : null);
    };
    tree.append(item(found.get("")));
    showAnswer();
  }

  function toggle(path) {
    if (open.has(path)) open.delete(path); else open.add(path);
    showTree();
  }

  function select(path) {
    selected = path;
    open.add(path);
    for (let p = path; p; p = parentOf(p)) open.add(parentOf(p));
    showTree();
  }

  function showAnswer() {
    const found = answers(view);
    const a = found.get(selected) || found.get("");
    const shown = a.path === selected ? a : null;
    const plain = answers("without-token");
    const plainAnswer = plain.get(selected) || plain.get("");
    const lines = [
      h("p", { class: "request" }, h("code", {}, `GET /latest/${selected}`),
        view === "with-token" ? " with the token" : " without a token"),
    ];
    if (!shown) {
      lines.push(h("p", {}, "Not reached: ", h("code", {}, "GET /latest/"), " answers ",
        statusBadge(a.status), ", so a client goes no further."));
    } else {
      lines.push(h("dl", { class: "facts" },
        h("dt", {}, "Status"), h("dd", {}, statusBadge(shown.status)),
        h("dt", {}, "Content-Type"), h("dd", {}, h("code", {}, shown["content-type"])),
        h("dt", {}, "Length"), h("dd", {}, `${number(shown.size)} bytes`)));
      if (shown.hidden) lines.push(h("p", { class: "notice notice-conflict" }, `Not shown: ${shown.hidden}.`));
      if (shown.encoding === "base64") lines.push(h("p", { class: "muted" }, "Not UTF-8: shown as base64."));
      lines.push(h("pre", { class: "body", "data-path": shown.path }, shown.body));
    }
    if (view === "with-token") {
      lines.push(h("p", { class: "plain" }, "Without a token: ", statusBadge(plainAnswer.status),
        plainAnswer.path === selected ? "" : ` (at GET /latest/ already)`));
    }
    answer.replaceChildren(...lines);
  }

  async function refresh() {
    try {
      ({ data } = await call("GET", `/v1/console/instances/${encodeURIComponent(id)}`));
    } catch (err) {
      message.show("error", err.message);
      return;
    }
    message.clear();
    showFacts();
    showTree();
    change?.update(data);
  }

  return { el, refresh };
}
