use super::*;

fn parse_args(args: &[&str]) -> io::Result<Options> {
    parse(&args.iter().map(OsString::from).collect::<Vec<_>>())
}

#[test]
fn options_and_program() {
    let options = parse_args(&[
        "--listen",
        "127.0.0.1:8080=web",
        "--listen=unix:/run/x.sock",
        "--ready-delay",
        "0.5",
        "--stop-signal",
        "QUIT",
        "--",
        "server",
        "--port",
        "1",
    ])
    .unwrap();
    assert_eq!(
        options.listen,
        [
            ("tcp://127.0.0.1:8080".to_string(), Some("web".to_string())),
            ("unix:/run/x.sock".to_string(), None)
        ]
    );
    assert_eq!(options.ready_delay, Some(Duration::from_millis(500)));
    assert_eq!(options.stop_signal, Signal::SIGQUIT);
    assert_eq!(options.program, ["server", "--port", "1"]);
    assert!(options.forwarded.contains(&Signal::SIGUSR2));
    assert_eq!(options.ready_timeout, crate::limits::DEFAULT_READY_TIMEOUT);
}

/// The usage is a literal, so it states the default again: it must agree.
#[test]
fn the_usage_states_the_ready_timeouts_default() {
    let default = crate::limits::DEFAULT_READY_TIMEOUT.as_secs();
    assert!(
        USAGE.contains(&format!("serves on (default {default})")),
        "{USAGE}"
    );
}

#[test]
fn bad_input_is_refused_with_a_reason() {
    for (args, why) in [
        (&["--"][..], "no PROGRAM"),
        (&["server"][..], "unknown option"),
        (&["--signal", "KILL", "--", "s"][..], "can be handled"),
        (&["--signal", "NOPE", "--", "s"][..], "can be handled"),
        (&["--ready-timeout", "-1", "--", "s"][..], "positive number"),
        (&["--ready-delay", "1", "--", "s"][..], "need --listen"),
        (&["--listen"][..], "needs a value"),
    ] {
        let err = parse_args(args).expect_err(why).to_string();
        assert!(err.contains(why), "{args:?}: {err}");
    }
}

#[test]
fn a_restart_signal_of_its_own_is_forwarded() {
    let options = parse_args(&["--signal", "HUP", "--forward", "TERM", "--", "s"]).unwrap();
    assert_eq!(options.forwarded, [Signal::SIGTERM, Signal::SIGHUP]);
}
