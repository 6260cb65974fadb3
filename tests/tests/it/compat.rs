//! Compatibility with the deployed peers: a client that knows none of our extensions
//! (the Python client) gets from our server what the Python server sends: one stream
//! in the order the command wrote it, unlabelled, long lines whole.

use lrpymrpc_proto::{ExecuteRequest, OutputStream};

use crate::env::TestEnv;
use crate::security::raw_upload;
use crate::tls::raw_client;

/// The lines (and their stream labels) an Execute of `command` sends, the server's
/// own notes left out.
fn execute_lines(env: &mut TestEnv, command: &str, separate_streams: bool) -> Vec<(String, i32)> {
    let (addr, tls) = (env.addr, env.tls.clone());
    let command = command.to_string();
    env.runtime().block_on(async move {
        let mut client = raw_client(addr, &tls, true).await.unwrap();
        let id = raw_upload(&mut client).await;
        let request = ExecuteRequest { unique_id: id, command_opt: command, separate_streams, ..Default::default() };
        let mut stream = client.execute(request).await.unwrap().into_inner();
        let mut lines = Vec::new();
        while let Some(response) = stream.message().await.unwrap() {
            if response.exit_status.is_none() && !response.message.starts_with("[lrpymrpc-mock-server]") {
                lines.push((response.message, response.stream));
            }
        }
        lines
    })
}

#[test]
fn a_client_without_the_extension_gets_one_ordered_stream_with_long_lines_whole() {
    let mut env = TestEnv::new();
    // Written alternately to stdout and stderr, with pauses shorter than any scheduler
    // would need to reorder two pipes; the merged pipe keeps the order by construction.
    let command = "for i in 1 2 3 4 5 6 7 8; do echo out$i; echo err$i >&2; done; \
                   head -c 300000 /dev/zero | tr '\\0' x; echo; echo last";
    let lines = execute_lines(&mut env, command, false);
    let mut expected: Vec<String> = (1..=8).flat_map(|i| [format!("out{i}"), format!("err{i}")]).collect();
    expected.push("x".repeat(300_000));
    expected.push("last".into());
    let texts: Vec<String> = lines.iter().map(|(text, _)| text.clone()).collect();
    assert_eq!(texts.len(), expected.len(), "{:?}", texts.iter().map(|t| t.len()).collect::<Vec<_>>());
    assert!(texts == expected, "one stream, in the order written, the 300 KB line whole");
    assert!(lines.iter().all(|(_, stream)| *stream == OutputStream::Unspecified as i32), "unlabelled, as upstream");

    // Our client asks for separate streams: each line is labelled with its pipe.
    let lines = execute_lines(&mut env, "echo out; echo err >&2", true);
    assert!(lines.contains(&("out".into(), OutputStream::Stdout as i32)), "{lines:?}");
    assert!(lines.contains(&("err".into(), OutputStream::Stderr as i32)), "{lines:?}");
}
