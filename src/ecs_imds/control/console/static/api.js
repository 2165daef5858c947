// The control plane's REST API, as the console calls it: the bearer token from this tab's
// sessionStorage in a header (never a cookie), JSON in and out, ETags through If-Match.

const KEY = "ecs-imds-api-token";

export const token = {
  get: () => sessionStorage.getItem(KEY),
  set: (value) => sessionStorage.setItem(KEY, value),
  clear: () => sessionStorage.removeItem(KEY),
};

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message || `HTTP ${status}`);
    this.status = status;
    this.code = code;
  }
}

function url(path, params) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params || {})) {
    if (value !== undefined && value !== null && value !== "") query.set(name, value);
  }
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

// One API call: resolves to {data, etag, status}; rejects with ApiError. A 401 also tells
// the page that the token is no longer good (event "signed-out").
export async function call(method, path, { body, etag, params } = {}) {
  const headers = { Authorization: `Bearer ${token.get() || ""}`, Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (etag) headers["If-Match"] = etag;
  let resp;
  try {
    resp = await fetch(url(path, params), {
      method, headers, cache: "no-store", credentials: "omit", redirect: "error",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new ApiError(0, "Unreachable", "the control plane cannot be reached");
  }
  const text = await resp.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch (err) {
    data = null;
  }
  if (resp.status === 401) window.dispatchEvent(new Event("signed-out"));
  if (!resp.ok) {
    throw new ApiError(resp.status, (data && data.Code) || "",
      (data && data.Message) || resp.statusText);
  }
  return { data, etag: resp.headers.get("ETag"), status: resp.status };
}
