// The console's shell: signing in, the pages (by the URL's #fragment) and Live — the
// versions of the served snapshot and of the store are polled, and the page on show reloads
// its data when either moves, whoever made the change (this console, another, the CLI,
// another server of the fleet).

import { ApiError, call, token } from "./api.js";
import { auditPage } from "./audit.js";
import { fleetPage } from "./fleet.js";
import { instancePage } from "./instance.js";

const LIVE_EVERY_MS = 1000;

const $ = (id) => document.getElementById(id);
let session = null;
let page = null;
let seen = null;
let liveTimer = null;

function showSignIn(message) {
  session = null;
  clearInterval(liveTimer);
  page?.dispose?.();
  page = null;
  $("view").replaceChildren();
  for (const id of ["nav", "live", "who", "signout"]) $(id).hidden = true;
  $("signin").hidden = false;
  $("signin-error").textContent = message || "";
  $("signin-token").focus();
}

async function startSession() {
  session = (await call("GET", "/v1/console/session")).data;
  $("signin").hidden = true;
  $("nav").hidden = false;
  $("signout").hidden = false;
  const who = $("who");
  who.hidden = false;
  who.textContent = session["may-write"] ? `${session.name} · admin` : `${session.name} · read-only`;
  who.dataset.scope = session.scope;
  seen = null;
  clearInterval(liveTimer);
  liveTimer = setInterval(live, LIVE_EVERY_MS);
  live();
  route();
}

function route() {
  if (!session) return;
  const [where, query] = (location.hash.slice(1) || "/fleet").split("?");
  const parts = where.split("/").filter(Boolean);
  const params = new URLSearchParams(query || "");
  page?.dispose?.();
  if (parts[0] === "instances" && parts[1]) {
    page = instancePage(decodeURIComponent(parts[1]), session);
  } else if (parts[0] === "audit") {
    page = auditPage(params);
  } else {
    page = fleetPage(params);
  }
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("current", link.dataset.page === (parts[0] === "audit" ? "audit" : "fleet"));
  }
  $("view").replaceChildren(page.el);
  page.refresh();
}

async function live() {
  if (document.hidden) return; // a tab in the background asks nothing; it catches up on return
  const indicator = $("live");
  indicator.hidden = false;
  try {
    const { data } = await call("GET", "/v1/console/version");
    const now = `${data.snapshot}/${data.store}`;
    if (seen !== null && now !== seen) page?.refresh({ live: true });
    seen = now;
    indicator.className = data.stale ? "live live-stale" : "live live-on";
    indicator.textContent = data.stale ? `stale · v${data.snapshot}` : `live · v${data.snapshot}`;
    indicator.title = data.stale
      ? "the store cannot be read: the data plane serves its last snapshot"
      : "changes made anywhere appear here as they are served";
  } catch (err) {
    indicator.className = "live live-off";
    indicator.textContent = "offline";
    indicator.title = err.message;
  }
}

$("signin-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = $("signin-token");
  token.set(input.value.trim());
  input.value = "";
  try {
    await startSession();
  } catch (err) {
    token.clear();
    showSignIn(err instanceof ApiError && err.status === 401
      ? "That token is not valid here." : err.message);
  }
});

$("signout").addEventListener("click", () => {
  token.clear();
  showSignIn("");
});

window.addEventListener("signed-out", () => {
  if (session) {
    token.clear();
    showSignIn("Your token is no longer accepted; sign in again.");
  }
});
window.addEventListener("hashchange", route);
document.addEventListener("visibilitychange", () => { if (session) live(); });

if (token.get()) {
  startSession().catch((err) => showSignIn(err.message));
} else {
  showSignIn("");
}
