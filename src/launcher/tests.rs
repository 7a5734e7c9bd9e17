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

/// The usage is a literal, so it states the defaults again: they must agree.
#[test]
fn the_usage_states_the_defaults() {
    let default = crate::limits::DEFAULT_READY_TIMEOUT.as_secs();
    assert!(
        USAGE.contains(&format!("serves on (default {default})")),
        "{USAGE}"
    );
    let probation = crate::limits::DEFAULT_PROBATION.as_secs();
    assert!(
        USAGE.contains(&format!("(default {probation}; 0: none")),
        "{USAGE}"
    );
}

#[test]
fn probation_and_health_check() {
    let options = parse_args(&["--", "s"]).unwrap();
    assert_eq!(options.probation, crate::limits::DEFAULT_PROBATION);
    assert_eq!(options.health_check, None);
    let options = parse_args(&[
        "--probation=0",
        "--health-check",
        "http://127.0.0.1:8080/health",
        "--",
        "s",
    ])
    .unwrap();
    assert_eq!(options.probation, Duration::ZERO);
    assert_eq!(
        options.health_check,
        Some(Probe::parse("http://127.0.0.1:8080/health").unwrap())
    );
    let probe = Probe::parse("http://127.0.0.1:8080").unwrap();
    assert_eq!(probe.path, "/");
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
        (&["--probation", "-2", "--", "s"][..], "positive number"),
        (
            &["--health-check", "https://x/", "--", "s"][..],
            "http://HOST:PORT/PATH",
        ),
        (
            &["--health-check", "http://:/", "--", "s"][..],
            "http://HOST:PORT/PATH",
        ),
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
