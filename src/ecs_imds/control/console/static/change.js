// Changing an instance: its metadata options (access mode, hop limit, tags in metadata), RAM
// role, spot reclaim and system events, each through the REST API after a confirmation.
//
// Every change carries the ETag of the instance as the operator saw it when they began
// (their first edit of a form, or the click of a one-button action) in If-Match. If anyone
// changed the instance since — another console, the CLI, another server — the API answers
// 412, nothing is written, and the operator is told; a Live refresh in between moves the
// page, never the ETag of a change already begun.

import { ApiError, call } from "./api.js";
import { h, MODES, notice } from "./dom.js";

const $ = (id) => document.getElementById(id);

// The confirmation dialog of index.html; resolves to true when confirmed.
export function confirmChange(title, text, etag) {
  const dialog = $("confirm");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-etag").textContent = etag;
  return new Promise((resolve) => {
    const done = (answer) => {
      $("confirm-ok").removeEventListener("click", ok);
      $("confirm-cancel").removeEventListener("click", cancel);
      dialog.removeEventListener("cancel", cancel);
      if (dialog.open) dialog.close();
      resolve(answer);
    };
    const ok = () => done(true);
    const cancel = (event) => { event.preventDefault(); done(false); };
    $("confirm-ok").addEventListener("click", ok);
    $("confirm-cancel").addEventListener("click", cancel);
    dialog.addEventListener("cancel", cancel);
    dialog.showModal();
  });
}

const OPTIONS = {
  normal: { HttpEndpoint: "enabled", HttpTokens: "optional" },
  "security-hardening": { HttpEndpoint: "enabled", HttpTokens: "required" },
  "endpoint-disabled": { HttpEndpoint: "disabled" },
};

const WHAT_MODE_MEANS = {
  normal: "Plain GETs are served again; tokens are still accepted.",
  "security-hardening": "Every GET will need a token: plain GETs from the instance get 403, and clients must PUT /latest/api/token first.",
  "endpoint-disabled": "Every request from the instance will get 403.",
};

const EVENT_TYPES = ["SystemMaintenance.Reboot", "SystemMaintenance.Redeploy",
  "SystemMaintenance.Stop", "SystemFailure.Reboot", "SystemFailure.Redeploy",
  "SystemFailure.Stop", "InstanceFailure.Reboot", "InstanceExpiration.Stop"];

function utcIn(minutes) {
  return new Date(Date.now() + minutes * 60000).toISOString().replace(/\.\d+Z$/, "Z");
}

export function changePanel(instanceId, changed) {
  let current = null; // the instance as last loaded, and its etag
  const message = notice();
  const forms = [];

  // A form whose edits begin from the ETag current at the first edit.
  function form(title, fields, reset) {
    const state = { begun: null, reset };
    const el = h("form", { class: "change", "aria-label": title, onsubmit: (e) => e.preventDefault() },
      h("h3", {}, title), fields);
    el.addEventListener("input", () => { state.begun ??= current.etag; });
    state.el = el;
    forms.push(state);
    return state;
  }

  async function apply(state, { title, text, method, path, body, etag }) {
    const ifMatch = etag || state?.begun || current.etag;
    message.clear();
    if (!(await confirmChange(title, text, ifMatch))) return;
    try {
      await call(method, `/v1/instances/${encodeURIComponent(instanceId)}${path}`, { body, etag: ifMatch });
      message.show("ok", `Done: ${title}.`);
    } catch (err) {
      if (err instanceof ApiError && err.status === 412) {
        message.show("conflict", `Not changed: ${instanceId} was changed elsewhere after you `
          + `began (you had ETag ${ifMatch}). The page now shows its current state; check it `
          + "and try again if it still needs the change.");
      } else {
        message.show("error", `Not changed: ${err.message}`);
      }
    } finally {
      if (state) state.begun = null;
      await changed();
      if (state) state.reset();
    }
  }

  // -- metadata options -------------------------------------------------------------------
  const mode = h("select", { name: "mode", "aria-label": "Access mode" },
    Object.entries(MODES).filter(([key]) => key !== "invalid")
      .map(([key, label]) => h("option", { value: key }, label)));
  const hops = h("input", { name: "hop-limit", type: "number", min: 1, max: 64, "aria-label": "Hop limit" });
  const tagsExposed = h("select", { name: "tags", "aria-label": "Tags in metadata" },
    h("option", { value: "enabled" }, "exposed"), h("option", { value: "disabled" }, "not exposed"));
  const options = form("Metadata options", [
    h("label", {}, "Access mode ", mode),
    h("label", {}, "Token hop limit ", hops),
    h("label", {}, "Tags in metadata ", tagsExposed),
    h("button", { type: "submit", class: "primary", onclick: () => applyOptions() }, "Apply options"),
  ], () => {
    mode.value = current.instance.mode;
    hops.value = current.instance["hop-limit"];
    tagsExposed.value = current.instance["tags-exposed"] ? "enabled" : "disabled";
  });

  function applyOptions() {
    const inst = current.instance;
    const body = {};
    const said = [];
    if (mode.value !== inst.mode) {
      Object.assign(body, OPTIONS[mode.value]);
      said.push(`access mode ${MODES[inst.mode]} → ${MODES[mode.value]}. ${WHAT_MODE_MEANS[mode.value]}`);
    }
    if (Number(hops.value) !== inst["hop-limit"]) {
      body.HttpPutResponseHopLimit = Number(hops.value);
      said.push(`token hop limit ${inst["hop-limit"]} → ${hops.value}.`);
    }
    const exposed = tagsExposed.value === "enabled";
    if (exposed !== inst["tags-exposed"]) {
      body.InstanceMetadataTags = tagsExposed.value;
      said.push(exposed ? "tags exposed under meta-data/tags/instance/." : "tags no longer in metadata.");
    }
    if (!said.length) {
      message.show("ok", "Nothing to change: the options are as shown.");
      return;
    }
    apply(options, { title: `Change the metadata options of ${instanceId}`,
      text: said.join(" "), method: "PATCH", path: "/metadata-options", body });
  }

  // -- RAM role ---------------------------------------------------------------------------
  const role = h("input", { name: "role", type: "text", placeholder: "role name", "aria-label": "RAM role name", spellcheck: "false" });
  const detach = h("button", { type: "button", onclick: () => apply(null, {
    title: `Detach RAM role ${current.instance.role} from ${instanceId}`,
    text: "ram/security-credentials/ will answer 404; SDKs on the instance lose their credentials.",
    method: "DELETE", path: "/ram-role" }) }, "Detach");
  const roles = form("RAM role", [
    h("label", {}, "Role ", role),
    h("button", { type: "submit", class: "primary", onclick: () => {
      const name = role.value.trim();
      if (!name) return message.show("error", "Give the name of the role to attach.");
      apply(roles, { title: `Attach RAM role ${name} to ${instanceId}`,
        text: `The instance will be served credentials of ${name}.`, method: "PUT",
        path: "/ram-role", body: { RamRoleName: name } });
    } }, "Attach"),
    detach,
  ], () => { role.value = current.instance.role || ""; });

  // -- spot reclaim -----------------------------------------------------------------------
  const when = h("input", { name: "termination-time", type: "text", placeholder: "2026-01-01T00:00:00Z", "aria-label": "Termination time (UTC)", spellcheck: "false" });
  const unschedule = h("button", { type: "button", onclick: () => apply(null, {
    title: `Cancel the spot reclaim of ${instanceId}`,
    text: "instance/spot/termination-time will answer 404 again.", method: "DELETE", path: "/spot" }) },
  "Cancel reclaim");
  const spot = form("Spot reclaim", [
    h("label", {}, "Termination time (UTC) ", when),
    h("button", { type: "submit", class: "primary", onclick: () => {
      const at = when.value.trim();
      apply(spot, { title: `Schedule the spot reclaim of ${instanceId}`,
        text: `instance/spot/termination-time will answer ${at}.`, method: "PUT", path: "/spot",
        body: { TerminationTime: at } });
    } }, "Schedule"),
    unschedule,
  ], () => { when.value = current.instance.spot || utcIn(5); });

  // -- system events ----------------------------------------------------------------------
  const eventList = h("ul", { class: "events" });
  const eventType = h("input", { name: "event-type", type: "text", list: "event-types", value: EVENT_TYPES[0], "aria-label": "Event type", spellcheck: "false" });
  const notBefore = h("input", { name: "not-before", type: "text", placeholder: "now", "aria-label": "Not before (UTC)", spellcheck: "false" });
  const reason = h("input", { name: "reason", type: "text", placeholder: "reason", "aria-label": "Reason" });
  const events = form("System events", [
    eventList,
    h("datalist", { id: "event-types" }, EVENT_TYPES.map((t) => h("option", { value: t }))),
    h("label", {}, "Type ", eventType),
    h("label", {}, "Not before (UTC) ", notBefore),
    h("label", {}, "Reason ", reason),
    h("button", { type: "submit", class: "primary", onclick: () => {
      const body = { EventType: eventType.value.trim(), Reason: reason.value.trim() };
      if (notBefore.value.trim()) body.NotBefore = notBefore.value.trim();
      apply(events, { title: `Add a ${body.EventType} event to ${instanceId}`,
        text: "maintenance/active-system-events will list it.", method: "POST",
        path: "/events", body });
    } }, "Add event"),
  ], () => {
    reason.value = "";
    notBefore.value = "";
  });

  function showEvents() {
    eventList.replaceChildren(...current.events.map((e) => h("li", {},
      h("span", { class: "chip warn" }, e.EventType), ` ${e.EventCycleStatus} from ${e.NotBefore} `,
      e.Reason ? h("span", { class: "muted" }, e.Reason) : null, " ",
      h("button", { type: "button", onclick: () => apply(null, {
        title: `Cancel event ${e.EventId} of ${instanceId}`,
        text: `${e.EventType} leaves maintenance/active-system-events.`, method: "DELETE",
        path: `/events/${encodeURIComponent(e.EventId)}` }) }, "Cancel"))));
  }

  const el = h("section", { class: "panel change-panel" }, h("h2", {}, "Change"), message.el,
    h("div", { class: "forms" }, forms.map((f) => f.el)));

  // New data: what has not been edited shows it; a form being edited keeps its edits.
  function update(data) {
    current = data;
    detach.hidden = !data.instance.role;
    unschedule.hidden = !data.instance.spot;
    showEvents();
    for (const state of forms) if (state.begun === null) state.reset();
  }

  return { el, update };
}
