// The fleet page: every instance, filtered by VPC, tag, access mode and text, a page at a
// time. The filter lives in the URL (#/fleet?vpc=…), so a filtered view can be shared.

import { call } from "./api.js";
import { debounce, h, instanceLink, MODES, modeBadge, notice, number } from "./dom.js";

const PAGE_SIZE = 50;

export function fleetPage(params) {
  const filter = {
    "vpc-id": params.get("vpc") || "",
    tag: params.get("tag") || "",
    mode: params.get("mode") || "",
    q: params.get("q") || "",
  };
  let cursor = {};
  let asked = 0;

  const vpc = h("select", { name: "vpc", "aria-label": "VPC" }, h("option", { value: "" }, "every VPC"));
  const tag = h("input", { name: "tag", type: "text", placeholder: "tag KEY or KEY=VALUE", value: filter.tag, "aria-label": "tag" });
  const mode = h("select", { name: "mode", "aria-label": "access mode" },
    h("option", { value: "" }, "every access mode"),
    Object.entries(MODES).filter(([key]) => key !== "invalid")
      .map(([key, label]) => h("option", { value: key, selected: filter.mode === key }, label)));
  const text = h("input", { name: "q", type: "search", placeholder: "id, name, address, tag, role, host…", value: filter.q, "aria-label": "search" });
  const count = h("span", { class: "count" }, "loading…");
  const prev = h("button", { type: "button", disabled: true }, "‹ Previous");
  const next = h("button", { type: "button", disabled: true }, "Next ›");
  const body = h("tbody");
  const message = notice();

  const table = h("table", { class: "fleet" },
    h("thead", {}, h("tr", {},
      ["Instance", "VPC", "Addresses", "Placement", "Access mode", "Tags", "RAM role", "Spot reclaim", "Events"]
        .map((name) => h("th", { scope: "col" }, name)))),
    body);

  const el = h("section", { class: "page fleet-page" },
    h("h1", {}, "Fleet"),
    h("form", { class: "filters", onsubmit: (e) => e.preventDefault() }, vpc, tag, mode, text),
    h("div", { class: "pager" }, count, h("span", { class: "spacer" }), prev, next),
    message.el,
    h("div", { class: "scroll" }, table));

  function keepInUrl() {
    const query = new URLSearchParams();
    for (const [name, key] of [["vpc", "vpc-id"], ["tag", "tag"], ["mode", "mode"], ["q", "q"]]) {
      if (filter[key]) query.set(name, filter[key]);
    }
    const text = query.toString();
    history.replaceState(null, "", text ? `#/fleet?${text}` : "#/fleet");
  }

  function changed() {
    filter["vpc-id"] = vpc.value;
    filter.tag = tag.value.trim();
    filter.mode = mode.value;
    filter.q = text.value.trim();
    cursor = {};
    keepInUrl();
    refresh();
  }
  const typed = debounce(changed, 200);
  vpc.addEventListener("change", changed);
  mode.addEventListener("change", changed);
  tag.addEventListener("input", typed);
  text.addEventListener("input", typed);
  prev.addEventListener("click", () => { cursor = { before: prev.dataset.cursor }; refresh(); });
  next.addEventListener("click", () => { cursor = { after: next.dataset.cursor }; refresh(); });

  function row(inst) {
    const tags = Object.entries(inst.tags);
    return h("tr", { "data-instance": inst["instance-id"] },
      h("td", { "data-label": "Instance" }, instanceLink(inst["instance-id"]),
        h("div", { class: "muted" }, inst.name)),
      h("td", { "data-label": "VPC" }, inst["vpc-id"]),
      h("td", { "data-label": "Addresses" }, inst.private.join(", "),
        inst.public.length ? h("div", { class: "muted" }, `public ${inst.public.join(", ")}`) : null),
      h("td", { "data-label": "Placement" }, inst.placement || h("span", { class: "muted" }, "none")),
      h("td", { "data-label": "Access mode" }, modeBadge(inst.mode),
        inst["hop-limit"] > 1 ? h("div", { class: "muted" }, `hop limit ${inst["hop-limit"]}`) : null),
      h("td", { "data-label": "Tags" },
        tags.map(([k, v]) => h("span", { class: "chip" }, `${k}=${v}`)),
        tags.length ? h("div", { class: "muted" },
          inst["tags-exposed"] ? "in metadata" : "not in metadata") : null),
      h("td", { "data-label": "RAM role" }, inst.role || h("span", { class: "muted" }, "none")),
      h("td", { "data-label": "Spot reclaim" }, inst.spot ? h("span", { class: "warn" }, inst.spot) : ""),
      h("td", { "data-label": "Events" },
        inst.events.map((type) => h("span", { class: "chip warn" }, type))));
  }

  function fillVpcs(vpcs) {
    const chosen = filter["vpc-id"];
    vpc.replaceChildren(h("option", { value: "" }, "every VPC"),
      vpcs.map((v) => h("option", { value: v["vpc-id"], selected: v["vpc-id"] === chosen },
        `${v["vpc-id"]} (${number(v.instances)})`)));
  }

  async function refresh() {
    const mine = ++asked;
    let data;
    try {
      ({ data } = await call("GET", "/v1/console/fleet",
        { params: { ...filter, ...cursor, "page-size": PAGE_SIZE } }));
    } catch (err) {
      if (mine === asked) message.show("error", err.message);
      return;
    }
    if (mine !== asked) return; // a newer question is on its way
    message.clear();
    fillVpcs(data.vpcs);
    const shown = data.instances.length;
    count.textContent = shown
      ? `${number(data.start + 1)}–${number(data.start + shown)} of ${number(data.total)}`
        + (data.total !== data["fleet-size"] ? ` matching (fleet: ${number(data["fleet-size"])})` : "")
      : `none of ${number(data["fleet-size"])} match`;
    prev.disabled = !data["prev-before"];
    prev.dataset.cursor = data["prev-before"] || "";
    next.disabled = !data["next-after"];
    next.dataset.cursor = data["next-after"] || "";
    body.replaceChildren(...data.instances.map(row));
  }

  return { el, refresh };
}
