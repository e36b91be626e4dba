"""The official MCP Python SDK (mcp==2.3.0) signs in to the gateway with OAuth 2.1 (SPEC §12).

Its OAuthClientProvider finds the authorization server from the gateway's 401, registers,
gets consent (this script fills in the consent form with an API key, as a person would),
exchanges the code with PKCE and calls a paid tool whose credits come off that key; after the
access token expires it refreshes without asking again; once the key is revoked the old
token gets 401 and a new sign-in is refused.

With PHASE=issue it signs in, pays for one call and keeps the client's tokens in
STORAGE_FILE; with PHASE=resume (after the gateway restarted on its --state-file) it calls
again with those tokens, paid by the same key, without asking for consent again.

env: GW_URL=<publicUrl> GW_API_KEY=pg_... GW_ADMIN_KEY=...
     [AUTH_METHOD=none|client_secret_post|client_secret_basic] [PHASE=issue|resume STORAGE_FILE=...]
Run by scripts/oauth_e2e.sh against `cargo run --example gateway -- --oauth`.
"""
import asyncio, json, os, sys
from html.parser import HTMLParser
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx2                                   # mcp 2.x depends on httpx2 (not httpx)
from pydantic import AnyUrl
from mcp import ClientSession
from mcp.client.auth import AuthorizationCodeResult, OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken

BASE = os.environ["GW_URL"].rstrip("/")          # publicUrl, e.g. http://127.0.0.1:8080 (same host spelling!)
MCP_URL = BASE + "/mcp"
REDIRECT_URI = "http://127.0.0.1:53682/callback"  # nothing listens: we read the 302 Location ourselves
AUTH_METHOD = os.environ.get("AUTH_METHOD") or None


class ConsentRefused(Exception):
    pass


class MemoryStorage:  # satisfies the TokenStorage Protocol (4 async methods)
    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client_info: OAuthClientInformationFull | None = None

    async def get_tokens(self): return self.tokens
    async def set_tokens(self, tokens: OAuthToken) -> None: self.tokens = tokens
    async def get_client_info(self): return self.client_info
    async def set_client_info(self, info: OAuthClientInformationFull) -> None: self.client_info = info


class ConsentForm(HTMLParser):
    def __init__(self) -> None:
        super().__init__(); self.action: str | None = None; self.hidden: dict[str, str] = {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form": self.action = a.get("action")
        elif tag == "input" and a.get("type") == "hidden" and a.get("name"): self.hidden[a["name"]] = a.get("value") or ""


class ConsentBot:
    """redirect_handler: GET the consent page, POST the form with api_key + decision=approve, keep the 302.
    callback_handler: hand back code/state/iss from that 302 Location."""
    def __init__(self, api_key: str) -> None:
        self.api_key = api_key; self.redirects = 0; self._result: AuthorizationCodeResult | None = None

    async def redirect_handler(self, authorization_url: str) -> None:
        self.redirects += 1
        async with httpx2.AsyncClient(follow_redirects=False) as http:
            page = await http.get(authorization_url)
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), page.status_code
            form = ConsentForm(); form.feed(page.text)
            data = dict(form.hidden, api_key=self.api_key, decision="approve")
            resp = await http.post(urljoin(authorization_url, form.action or "/oauth/authorize"), data=data)
        if resp.status_code != 302:
            raise ConsentRefused(f"consent page answered HTTP {resp.status_code} (wrong/revoked key?)")
        q = parse_qs(urlsplit(resp.headers["location"]).query)
        if "error" in q:
            raise ConsentRefused(q["error"][0])
        self._result = AuthorizationCodeResult(code=q["code"][0], state=q.get("state", [None])[0],
                                               iss=q.get("iss", [None])[0])   # pass iss through untouched

    async def callback_handler(self) -> AuthorizationCodeResult:
        result, self._result = self._result, None
        assert result is not None
        return result


async def balance() -> int:
    async with httpx2.AsyncClient() as raw:
        r = await raw.get(BASE + "/balance", headers={"X-API-Key": os.environ["GW_API_KEY"]})
        assert r.status_code == 200, r.text
        return r.json()["credits"]


def provider_for(storage: MemoryStorage, bot: ConsentBot) -> OAuthClientProvider:
    meta = {"token_endpoint_auth_method": AUTH_METHOD} if AUTH_METHOD else {}
    return OAuthClientProvider(
        server_url=MCP_URL,  # the protected resource itself: PRM `resource` must be it or a parent of it
        client_metadata=OAuthClientMetadata(client_name="paygate e2e", redirect_uris=[AnyUrl(REDIRECT_URI)], **meta),
        storage=storage, redirect_handler=bot.redirect_handler, callback_handler=bot.callback_handler)


async def across_restart(phase: str, path: str) -> int:
    """Tokens issued before a gateway restart keep working after it (grants in the state file)."""
    storage, bot = MemoryStorage(), ConsentBot(os.environ["GW_API_KEY"])
    if phase == "resume":
        with open(path) as f:
            saved = json.load(f)
        storage.tokens = OAuthToken.model_validate(saved["tokens"])
        storage.client_info = OAuthClientInformationFull.model_validate(saved["client_info"])
    start = await balance()
    async with httpx2.AsyncClient(auth=provider_for(storage, bot)) as http, \
            streamable_http_client(MCP_URL, http_client=http) as (read, write), \
            ClientSession(read, write) as session:
        await session.initialize()
        r = await session.call_tool("echo", {"message": phase})
        assert not r.is_error, r
    assert await balance() == start - 1, "the call was paid by the approving key"
    if phase == "issue":
        assert bot.redirects == 1, bot.redirects
        with open(path, "w") as f:
            json.dump({"tokens": storage.tokens.model_dump(mode="json"),
                       "client_info": storage.client_info.model_dump(mode="json")}, f)
    else:
        assert bot.redirects == 0, "the restarted gateway asked for consent again"
    print(f"OK: {phase} across a restart")
    return 0


async def run() -> int:
    phase = os.environ.get("PHASE")
    if phase:
        return await across_restart(phase, os.environ["STORAGE_FILE"])
    storage, bot = MemoryStorage(), ConsentBot(os.environ["GW_API_KEY"])
    start = await balance()
    provider = provider_for(storage, bot)

    try:
        async with httpx2.AsyncClient(auth=provider) as http, \
                streamable_http_client(MCP_URL, http_client=http) as (read, write), \
                ClientSession(read, write) as session:
            await session.initialize()                       # free method: no 401 yet
            print("tools:", [t.name for t in (await session.list_tools()).tools])
            r = await session.call_tool("echo", {"message": "hi"})  # 401 -> PRM -> ASM -> DCR -> consent -> token -> retry
            assert not r.is_error and bot.redirects == 1, (r, bot.redirects)
            assert await balance() == start - 1, "the call was paid by the approving key"
            # Signed in, tools/list goes with the token too (free: nothing is charged).
            listed = [t.name for t in (await session.list_tools()).tools]
            assert "echo" in listed and bot.redirects == 1, listed
            assert await balance() == start - 1
            first = storage.tokens
            assert first is not None and first.expires_in is not None

            # Refresh: gateway configured with a short access TTL; sleep strictly past expires_in.
            await asyncio.sleep(first.expires_in + 1)
            r = await session.call_tool("echo", {"message": "after-refresh"})
            assert not r.is_error and bot.redirects == 1, "refresh must not re-run consent"
            assert storage.tokens.access_token != first.access_token and storage.tokens.refresh_token != first.refresh_token
            assert await balance() == start - 2

            # Revoking the key ends its grants: the old token is refused with 401.
            async with httpx2.AsyncClient() as raw:
                revoked = await raw.post(BASE + "/keys/revoke", json={"key": os.environ["GW_API_KEY"]},
                                         headers={"X-Admin-Key": os.environ["GW_ADMIN_KEY"]})
                assert revoked.status_code == 200, revoked.text
                probe = await raw.post(MCP_URL, json={"jsonrpc": "2.0", "id": 99, "method": "tools/call",
                                                      "params": {"name": "echo", "arguments": {}}},
                                       headers={"Authorization": f"Bearer {storage.tokens.access_token}",
                                                "Accept": "application/json, text/event-stream"})
            assert probe.status_code == 401 and "resource_metadata=" in probe.headers["www-authenticate"], probe.status_code
            # Through the SDK: 401 -> provider re-discovers and calls redirect_handler again (no refresh attempt);
            # the revoked key cannot consent, the handler raises, and the error tears down the transport.
            await session.call_tool("echo", {"message": "after-revoke"})
            print("FAIL: call after revocation succeeded"); return 1
    except BaseExceptionGroup as eg:
        if eg.subgroup(ConsentRefused) and bot.redirects == 2:
            print("OK: after revocation the SDK got 401 and consent was refused; redirects =", bot.redirects)
            return 0
        raise
    return 1


if __name__ == "__main__":
    sys.exit(asyncio.run(run()))
