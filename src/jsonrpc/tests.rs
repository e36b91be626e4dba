//! The parse and the answer reading, tried on good, bad and hostile input.

use super::*;
use serde_json::json;

#[test]
fn envelope_rules() {
    let bad = [
        (
            &br#"{"jsonrpc":"1.0","id":1,"method":"x"}"#[..],
            INVALID_REQUEST,
        ),
        (br#"{"id":1,"method":"x"}"#, INVALID_REQUEST),
        (br#"{"jsonrpc":"2.0","id":1,"method":5}"#, INVALID_REQUEST),
        (
            br#"{"jsonrpc":"2.0","id":{},"method":"x"}"#,
            INVALID_REQUEST,
        ),
        (
            br#"{"jsonrpc":"2.0","id":1,"method":"x","params":3}"#,
            INVALID_REQUEST,
        ),
        (
            br#"[{"jsonrpc":"2.0","id":1,"method":"x"}]"#,
            INVALID_REQUEST,
        ),
        (br#""just a string""#, INVALID_REQUEST),
        (
            br#"{"jsonrpc":"2.0","method":"x","method":"y"}"#,
            INVALID_REQUEST,
        ),
        (b"", PARSE_ERROR),
        (b"\xff\xfe", PARSE_ERROR),
        (br#"{"jsonrpc":"2.0""#, PARSE_ERROR),
    ];
    for (body, code) in bad {
        assert_eq!(
            parse_request(body).unwrap_err().code,
            code,
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    let n = parse_request(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).unwrap();
    assert!(n.id.is_none());
}

fn call_with(params: &str) -> Result<RpcRequest, RpcError> {
    let body = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{params}}}"#);
    parse_request(body.as_bytes())
}

#[test]
fn duplicates_are_found_at_any_depth_and_only_within_one_object() {
    let refused = [
        r#"{"name":"t","arguments":{"a":{"b":[{"c":1,"c":2}]}}}"#,
        r#"{"name":"t","arguments":{"a":1,"\u0061":2}}"#,
        r#"{"name":"t","arguments":1,"extra":{"x":{},"x":{}}}"#,
        r#"[{"k":1,"k":1}]"#,
    ];
    for params in refused {
        assert_eq!(
            call_with(params).unwrap_err().code,
            INVALID_REQUEST,
            "{params}"
        );
    }
    let accepted = [
        r#"{"name":"t","arguments":[{"a":1},{"a":2}]}"#,
        r#"{"name":"t","arguments":{"a":{"a":{"a":1}},"b":{"a":2}}}"#,
    ];
    for params in accepted {
        assert!(call_with(params).is_ok(), "{params}");
    }
    // Past the linear scan, a hash set takes over; a late duplicate is still found.
    let keys: Vec<String> = (0..200).map(|i| format!(r#""k{i}":{i}"#)).collect();
    let wide = format!(r#"{{"name":"t","arguments":{{{}}}}}"#, keys.join(","));
    assert!(call_with(&wide).is_ok());
    let late = format!(
        r#"{{"name":"t","arguments":{{{},"k3":0}}}}"#,
        keys.join(",")
    );
    assert_eq!(call_with(&late).unwrap_err().code, INVALID_REQUEST);
    // Top-level members are checked too, wherever they sit.
    let body = br#"{"jsonrpc":"2.0","id":1,"method":"x","params":{},"id":2}"#;
    assert_eq!(parse_request(body).unwrap_err().code, INVALID_REQUEST);
}

#[test]
fn the_parse_reads_name_size_and_where_the_id_is() {
    let body = "{\"id\" : \"a-1\", \"jsonrpc\":\"2.0\",\"method\":\"tools/call\",\"params\":{ \"name\" : \"t\",\n \"arguments\" : { \"q\" : [1, 2.5, \"\\u00e9\"] } }}";
    let req = parse_request(body.as_bytes()).unwrap();
    assert_eq!(req.tool_name().unwrap(), "t");
    assert_eq!(req.arguments_len(), r#"{"q":[1,2.5,"é"]}"#.len());
    assert_eq!(req.id, Some(json!("a-1")));
    let span = req.id_span().unwrap();
    assert_eq!(&body[span], r#""a-1""#);
    let bare = parse_request(br#"{"jsonrpc":"2.0","method":"notifications/x"}"#).unwrap();
    assert_eq!((bare.id_span(), bare.arguments_len()), (None, 0));
    // Ids that are not a string, number or null are refused however deep they go.
    let deep = format!(
        r#"{{"jsonrpc":"2.0","id":{}{},"method":"x"}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    assert_eq!(
        parse_request(deep.as_bytes()).unwrap_err().code,
        INVALID_REQUEST
    );
}

fn arb_json() -> impl proptest::strategy::Strategy<Value = Value> {
    use proptest::prelude::*;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".*".prop_map(Value::from),
        "[\"\\\\/\u{0}-\u{1f}\u{7f}-\u{10ffff}]{0,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,6}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest::proptest! {
    /// The measured size is what the pricing rules were written against: the compact
    /// JSON of the parsed arguments, however the caller laid them out.
    #[test]
    fn arguments_len_is_the_compact_length_of_the_parsed_arguments(
        args in arb_json(),
        pretty in proptest::prelude::any::<bool>(),
    ) {
        let text = if pretty {
            serde_json::to_string_pretty(&args).unwrap()
        } else {
            serde_json::to_string(&args).unwrap()
        };
        let req = call_with(&format!(r#"{{"arguments":{text},"name":"tool"}}"#)).unwrap();
        let reparsed: Value = serde_json::from_str(&text).unwrap();
        proptest::prop_assert_eq!(req.arguments_len(), crate::pricing::compact_json_len(&reparsed));
        proptest::prop_assert_eq!(req.tool_name().unwrap(), "tool");
    }
}

#[test]
fn tool_name_must_be_a_string() {
    for params in [r#"{}"#, r#"{"name":5}"#, r#"{"name":null}"#, r#"["echo"]"#] {
        let body = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{params}}}"#);
        assert_eq!(
            parse_request(body.as_bytes())
                .unwrap()
                .tool_name()
                .unwrap_err()
                .code,
            INVALID_PARAMS
        );
    }
}

#[test]
fn deep_nesting_is_refused_not_a_stack_overflow() {
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"x","arguments":{}{}}}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert_eq!(
        parse_request(body.as_bytes()).unwrap_err().code,
        PARSE_ERROR
    );
}

#[test]
fn gateway_answers_carry_the_id_exactly_as_sent() {
    for id in [
        "1.0",
        "1e0",
        "-0",
        "123456789012345678901234567890",
        "\"a\\\"b\"",
        "null",
    ] {
        let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call"}}"#);
        let req = parse_request(body.as_bytes()).unwrap();
        assert_eq!(req.id_as_sent(body.as_bytes()), Some(id));
        let reply = error_body_as_sent(req.id_as_sent(body.as_bytes()), INVALID_PARAMS, "m", None);
        let text = String::from_utf8(reply).unwrap();
        assert!(text.contains(&format!(r#""id":{id},"#)), "{text}");
        serde_json::from_str::<Value>(&text).expect("valid JSON");
    }
    let none = error_body_as_sent(None, INVALID_PARAMS, "m", None);
    assert!(String::from_utf8(none).unwrap().contains(r#""id":null"#));
}

#[test]
fn names_are_bounded_at_parse_time() {
    let call = |name: &str| {
        format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{name}"}}}}"#)
    };
    let longest = "a".repeat(MAX_NAME_BYTES);
    let req = parse_request(call(&longest).as_bytes()).unwrap();
    assert_eq!(req.tool_name().unwrap(), longest);
    let req = parse_request(call(&"a".repeat(1 << 20)).as_bytes()).unwrap();
    assert_eq!(req.tool_name().unwrap_err().code, INVALID_PARAMS);
    assert!(req.tool.is_none(), "a too-long name is not kept");
    assert_eq!(req.mcp_name(), None);
    let method = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"{}"}}"#,
        "m".repeat(MAX_NAME_BYTES + 1)
    );
    assert_eq!(
        parse_request(method.as_bytes()).unwrap_err().code,
        INVALID_REQUEST
    );
}

#[test]
fn mcp_name_is_the_name_else_the_uri() {
    let read = parse_request(
        br#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///a"}}"#,
    )
    .unwrap();
    assert_eq!(read.mcp_name(), Some("file:///a"));
    let prompt = parse_request(
        br#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"p","uri":"x"}}"#,
    )
    .unwrap();
    assert_eq!(prompt.mcp_name(), Some("p"));
    let ping = parse_request(br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#).unwrap();
    assert_eq!(ping.mcp_name(), None);
}

#[test]
fn classify_reads_the_first_response_whatever_its_id() {
    for id in [json!(3), json!(3.0), json!("3"), json!(null), json!(-0.0)] {
        let ok = json!({"jsonrpc":"2.0","id":id,"result":{}});
        assert_eq!(classify_response(&ok), Some(CallOutcome::Success));
    }
    assert_eq!(
        classify_response(&json!({"jsonrpc":"2.0","id":3,"result":{"isError":true}})),
        Some(CallOutcome::ToolError)
    );
    assert_eq!(
        classify_response(&json!({"jsonrpc":"2.0","id":3,"error":{}})),
        Some(CallOutcome::RpcError)
    );
    // Server-to-client requests and notifications are not the answer.
    assert_eq!(
        classify_response(&json!({"jsonrpc":"2.0","id":9,"method":"sampling/createMessage"})),
        None
    );
    assert_eq!(
        classify_response(&json!({"jsonrpc":"2.0","method":"notifications/progress"})),
        None
    );
}
