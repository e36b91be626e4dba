#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| paygate_mcp::fuzzing::jsonrpc_request(data));
