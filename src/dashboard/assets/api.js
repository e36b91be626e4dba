// The admin API next to this page, called with the admin key this tab signed in with.
// The key lives in sessionStorage only: it leaves with the tab and is never put in a URL,
// a cookie or the page.

const STORAGE_KEY = 'paygate.adminKey';

/**
 * The admin API's base: the folder the page is in (the page is `<prefix>/dashboard`), so a
 * prefix in front of the API carries over. Resolved as a URL, never by string pasting, and
 * every request is checked to stay on this origin before the key is attached.
 */
const apiBase = new URL('./', location.href);

/** An answer the API refused, with its HTTP status and the API's own message. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export const session = {
  key: () => sessionStorage.getItem(STORAGE_KEY),
  signIn: (adminKey) => sessionStorage.setItem(STORAGE_KEY, adminKey),
  signOut: () => sessionStorage.removeItem(STORAGE_KEY),
};

/**
 * Calls `method path` with an optional JSON `body` and `query` parameters (empty ones are left
 * out). Resolves to `{data, headers}`; rejects with an ApiError carrying the API's message.
 */
export async function request(method, path, { body, query } = {}) {
  const url = new URL(path.replace(/^\//, ''), apiBase);
  if (url.origin !== location.origin) throw new ApiError(0, 'Refused: the API would not be on this origin.');
  for (const [name, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== '') url.searchParams.set(name, value);
  }
  const headers = { 'X-Admin-Key': session.key() || '' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let resp;
  try {
    resp = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
      credentials: 'omit',
      redirect: 'error',
    });
  } catch (e) {
    // A key with characters no header can carry fails here too, before anything is sent.
    throw new ApiError(0, `The request was not sent: ${e.message}`);
  }
  const type = resp.headers.get('content-type') || '';
  let data;
  if (type.includes('json')) {
    data = await resp.json().catch(() => undefined);
    if (data === undefined || data === null) throw new ApiError(resp.status, `The gateway's answer to ${path} was not readable JSON.`);
  } else {
    data = await resp.text();
  }
  if (!resp.ok) {
    const message = typeof data === 'object' && typeof data.error === 'string' ? data.error : `HTTP ${resp.status}`;
    throw new ApiError(resp.status, message);
  }
  return { data, headers: resp.headers };
}

/**
 * A guard for views whose answers can cross: each call of `ticket()` returns a check that
 * holds only while no later ticket was taken, so an older answer never overwrites a newer one.
 */
export function latest() {
  let issued = 0;
  return () => {
    const mine = ++issued;
    return () => mine === issued;
  };
}

export const get = (path, query) => request('GET', path, { query });
export const post = (path, body) => request('POST', path, { body });
