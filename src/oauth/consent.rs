//! The consent page: plain server-rendered HTML, no script and no external asset, every
//! shown value escaped. It names the client and what it asks for, and asks for the API key
//! whose credits will pay (the account the grant acts for).

/// What the consent page shows and carries.
#[derive(Debug, Clone, Default)]
pub struct ConsentView<'a> {
    /// The server's name.
    pub server_name: &'a str,
    /// The client's name as it registered it (may be empty).
    pub client_name: &'a str,
    /// The client's id.
    pub client_id: &'a str,
    /// Where the answer goes.
    pub redirect_uri: &'a str,
    /// The scope asked for.
    pub scope: &'a str,
    /// Every parameter of the authorization request, carried back by the form.
    pub params: &'a [(String, String)],
    /// A message after a refused attempt (a wrong key).
    pub error: Option<&'a str>,
}

/// `text` safe inside HTML text and double-quoted attributes.
///
/// ```
/// assert_eq!(paygate_mcp::oauth::consent::escape(r#"<a href="x">&'"#), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
/// ```
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The page for `view`. The form POSTs to `/oauth/authorize` with every original parameter,
/// `api_key` and `decision` (`approve` or `deny`).
///
/// ```
/// use paygate_mcp::oauth::consent::{consent_page, ConsentView};
/// let page = consent_page(&ConsentView { client_name: "<script>", ..Default::default() });
/// assert!(page.contains("&lt;script&gt;") && !page.contains("<script>"));
/// ```
pub fn consent_page(view: &ConsentView<'_>) -> String {
    let client = if view.client_name.trim().is_empty() {
        format!("An application ({})", escape(view.client_id))
    } else {
        escape(view.client_name)
    };
    let scope = if view.scope.is_empty() {
        "use the tools of this server".to_string()
    } else {
        format!(
            "use the tools of this server (scope: {})",
            escape(view.scope)
        )
    };
    let error = view
        .error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>\n", escape(e)))
        .unwrap_or_default();
    let hidden: String = view
        .params
        .iter()
        .filter(|(k, _)| k != "api_key" && k != "decision")
        .map(|(k, v)| {
            format!(
                "<input type=\"hidden\" name=\"{}\" value=\"{}\">\n",
                escape(k),
                escape(v)
            )
        })
        .collect();
    format!(
        "<!doctype html>
<html lang=\"en\">
<head>
<meta charset=\"utf-8\">
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">
<title>Allow access to {server}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem}}
.error{{color:#b00020}}code{{word-break:break-all}}button{{margin-right:.5rem}}</style>
</head>
<body>
<h1>Allow access to {server}?</h1>
<p><strong>{client}</strong> asks to {scope}. Calls it makes are paid with the credits of the
API key you enter below.</p>
<p>After you answer you go back to <code>{redirect}</code>.</p>
{error}<form method=\"post\" action=\"/oauth/authorize\">
{hidden}<label for=\"api_key\">API key</label><br>
<input id=\"api_key\" name=\"api_key\" type=\"password\" autocomplete=\"off\" required><br><br>
<button type=\"submit\" name=\"decision\" value=\"approve\">Allow</button>
<button type=\"submit\" name=\"decision\" value=\"deny\" formnovalidate>Deny</button>
</form>
</body>
</html>
",
        server = escape(view.server_name),
        redirect = escape(view.redirect_uri),
    )
}
