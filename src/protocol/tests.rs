use super::*;
use std::collections::HashMap;

fn parse_with(vars: &[(&str, &str)], pid: u32, open_up_to: RawFd) -> Heritage {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    parse(
        |k| map.get(k).cloned(),
        pid,
        |fd| fd >= 0 && fd <= open_up_to,
    )
}

#[test]
fn names_follow_systemd_rules() {
    assert!(check_name("http").is_ok());
    assert!(check_name("a b-c_d.e/f").is_ok());
    assert!(check_name(&"x".repeat(GR_NAME_MAX)).is_ok());
    for bad in ["", "a:b", "tab\there", "é", "nul\0"] {
        let err = check_name(bad).unwrap_err();
        assert_eq!(crate::error::errno_of(&err), libc::EINVAL, "{bad:?}");
    }
    let long = check_name(&"x".repeat(GR_NAME_MAX + 1))
        .unwrap_err()
        .to_string();
    assert!(long.contains(&format!(" {GR_NAME_MAX} bytes")), "{long}");
}

#[test]
fn a_fresh_start_inherits_nothing() {
    let h = parse_with(&[], 42, 100);
    assert_eq!(
        h,
        Heritage {
            generation: 1,
            ..Heritage::default()
        }
    );
}

#[test]
fn an_heir_reads_everything() {
    let h = parse_with(
        &[
            ("LISTEN_PID", "42"),
            ("LISTEN_FDS", "2"),
            ("LISTEN_FDNAMES", "http:admin"),
            ("GRESTART_READY_FD", "5"),
            ("GRESTART_GENERATION", "7"),
            ("GRESTART_PREDECESSOR_PID", "41"),
        ],
        42,
        5,
    );
    assert_eq!(h.predecessor, Some(41));
    assert_eq!(
        h.fds,
        vec![("http".to_string(), 3), ("admin".to_string(), 4)]
    );
    assert_eq!(h.ready_fd, Some(5));
    assert_eq!(h.generation, 7);
    assert!(h.problems.is_empty(), "{:?}", h.problems);
}

#[test]
fn systemd_activation_without_names() {
    let h = parse_with(&[("LISTEN_PID", "42"), ("LISTEN_FDS", "1")], 42, 3);
    assert_eq!(h.fds, vec![("unknown".to_string(), 3)]);
    assert_eq!((h.ready_fd, h.generation), (None, 1));
}

#[test]
fn variables_for_another_process_are_ignored() {
    let h = parse_with(
        &[
            ("LISTEN_PID", "41"),
            ("LISTEN_FDS", "1"),
            ("GRESTART_READY_FD", "4"),
        ],
        42,
        10,
    );
    assert!(h.fds.is_empty() && h.ready_fd.is_none());
    assert_eq!(h.problems.len(), 1);
    let h = parse_with(&[("LISTEN_FDS", "1")], 42, 10);
    assert!(h.fds.is_empty());
    assert_eq!(h.problems.len(), 1);
}

#[test]
fn garbage_is_never_trusted() {
    for fds in [
        "-1",
        "+1",
        " 1",
        "1x",
        "",
        "99999999999999999999999",
        "65537",
        "0x2",
    ] {
        let h = parse_with(&[("LISTEN_PID", "42"), ("LISTEN_FDS", fds)], 42, 100_000);
        assert!(h.fds.is_empty(), "LISTEN_FDS={fds:?}");
        assert_eq!(h.problems.len(), 1, "LISTEN_FDS={fds:?}");
    }
    for pid in ["", "-42", "042x", "4 2"] {
        let h = parse_with(&[("LISTEN_PID", pid), ("LISTEN_FDS", "1")], 42, 100);
        assert!(h.fds.is_empty(), "LISTEN_PID={pid:?}");
    }
}

#[test]
fn a_closed_fd_voids_the_whole_list() {
    let h = parse_with(&[("LISTEN_PID", "42"), ("LISTEN_FDS", "3")], 42, 4);
    assert!(h.fds.is_empty());
    assert!(
        h.problems[0].contains("fd 5 is not an open socket"),
        "{:?}",
        h.problems
    );
}

#[test]
fn bad_names_fall_back_to_unnamed() {
    let h = parse_with(
        &[
            ("LISTEN_PID", "42"),
            ("LISTEN_FDS", "2"),
            ("LISTEN_FDNAMES", "a"),
        ],
        42,
        10,
    );
    assert_eq!(
        h.fds,
        vec![("unknown".to_string(), 3), ("unknown".to_string(), 4)]
    );
    let h = parse_with(
        &[
            ("LISTEN_PID", "42"),
            ("LISTEN_FDS", "2"),
            ("LISTEN_FDNAMES", "a:\u{1}"),
        ],
        42,
        10,
    );
    assert_eq!(
        h.fds,
        vec![("a".to_string(), 3), ("unknown".to_string(), 4)]
    );
}

#[test]
fn a_ready_fd_must_be_open_and_after_the_listeners() {
    for (fd, open_up_to) in [("3", 10), ("9", 8), ("-5", 10), ("x", 10)] {
        let h = parse_with(
            &[
                ("LISTEN_PID", "42"),
                ("LISTEN_FDS", "1"),
                ("GRESTART_READY_FD", fd),
            ],
            42,
            open_up_to,
        );
        assert_eq!(h.ready_fd, None, "GRESTART_READY_FD={fd}");
        assert_eq!(h.problems.len(), 1);
    }
    let h = parse_with(
        &[("LISTEN_PID", "42"), ("GRESTART_GENERATION", "0")],
        42,
        10,
    );
    assert_eq!(h.generation, 1);
}

#[test]
fn successor_env_replaces_protocol_variables() {
    let current = [
        ("PATH", "/bin"),
        ("LISTEN_FDS", "9"),
        ("GRESTART_GENERATION", "3"),
        ("LISTEN_PID", "1"),
        // Replaced as every variable an heir removes (`VARIABLES`).
        ("GRESTART_DRAINING_PIDS", "12,13"),
    ]
    .map(|(k, v)| (OsString::from(k), OsString::from(v)));
    let draining = Draining::Known(vec![38, 40]);
    let env = successor_env(current, &["http", "admin"], 3, 12, 40, 0x1000, &draining);
    let env: Vec<&str> = env.iter().map(|e| e.to_str().unwrap()).collect();
    assert_eq!(
        env,
        [
            "PATH=/bin",
            "LISTEN_FDS=2",
            "LISTEN_FDNAMES=http:admin",
            "GRESTART_READY_FD=5",
            "GRESTART_GENERATION=4",
            "GRESTART_SIGNAL=12",
            "GRESTART_PREDECESSOR_PID=40",
            "GRESTART_IGNORED=1000",
            "GRESTART_DRAINING=2",
            "GRESTART_DRAINING_PIDS=38,40"
        ]
    );
    // Behind an older grestart only the count is known, and passed on.
    let env = successor_env([], &[], 3, 12, 40, 0, &Draining::Counted(5));
    let last = env.last().unwrap().to_str().unwrap();
    assert_eq!(last, "GRESTART_DRAINING=5");
}

#[test]
fn the_draining_generations_are_read_by_pid() {
    let read = |vars: &[(&str, &str)]| {
        let vars = [&[("LISTEN_PID", "7")], vars].concat();
        parse_with(&vars, 7, 2)
    };
    let h = read(&[
        ("GRESTART_DRAINING", "3"),
        ("GRESTART_DRAINING_PIDS", "5,2147483647,6"),
    ]);
    assert_eq!(h.draining, Draining::Known(vec![5, i32::MAX, 6]));
    assert!(h.problems.is_empty(), "{:?}", h.problems);
    // From an older grestart: the count alone.
    assert_eq!(
        read(&[("GRESTART_DRAINING", "3")]).draining,
        Draining::Counted(3)
    );
    let nine = ["9"; GR_MAX_DRAINING as usize + 1].join(",");
    for garbage in ["", ",", "5,", "0", "-5", "5;6", " 5", "2147483648", &nine] {
        let h = read(&[
            ("GRESTART_DRAINING", "2"),
            ("GRESTART_DRAINING_PIDS", garbage),
        ]);
        // Ignored, for the count: never fewer than the parent said.
        assert_eq!(h.draining, Draining::Counted(2), "{garbage:?}");
        assert!(
            h.problems[0].contains("not a list of at most 8 process ids"),
            "{garbage:?}: {:?}",
            h.problems
        );
    }
    let eight = ["9"; GR_MAX_DRAINING as usize].join(",");
    assert_eq!(
        read(&[("GRESTART_DRAINING_PIDS", &eight)]).draining.count(),
        8
    );
}

#[test]
fn the_first_generations_ignored_signals_travel() {
    let heritage = parse_with(&[("LISTEN_PID", "7"), ("GRESTART_IGNORED", "1001")], 7, 2);
    assert_eq!(heritage.ignored, Some(0x1001));
    let garbage = parse_with(
        &[("LISTEN_PID", "7"), ("GRESTART_IGNORED", "sigpipe")],
        7,
        2,
    );
    assert_eq!(garbage.ignored, None);
    assert!(
        garbage.problems[0].contains("not a signal mask"),
        "{:?}",
        garbage.problems
    );
}

/// A fixed-budget property test (the "fuzz target" of the parser): random
/// and hostile values never panic, and every fd handed out is one the
/// probe called a socket, in the listed range, with a valid name.
#[test]
fn random_environments_never_yield_a_wrong_fd() {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |bound: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state as usize % bound
    };
    let pieces = [
        "",
        "0",
        "1",
        "3",
        "42",
        "-1",
        "65536",
        "65537",
        "99999999999999999999",
        " 2",
        "x",
        ":",
        "a",
        "unknown",
        "\u{7f}",
        "é",
        "4294967338",
        "7,7,7,7,7,7,7,7,7",
    ];
    let keys = [
        LISTEN_PID,
        LISTEN_FDS,
        LISTEN_FDNAMES,
        READY_FD,
        GENERATION,
        PREDECESSOR,
        DRAINING,
        DRAINING_PIDS,
    ];
    for _ in 0..20_000 {
        let mut vars: Vec<(&str, String)> = Vec::new();
        for key in keys {
            if next(4) == 0 {
                continue;
            }
            let mut value = String::new();
            for k in 0..next(3) + 1 {
                if k > 0 && next(2) == 0 {
                    value.push([':', ','][next(2)]);
                }
                value.push_str(pieces[next(pieces.len())]);
            }
            if key == LISTEN_PID && next(2) == 0 {
                value = "42".into();
            }
            vars.push((key, value));
        }
        let sockets_up_to = next(8) as RawFd;
        let var = |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
        let h = parse(var, 42, |fd| (3..=sockets_up_to).contains(&fd));
        for (i, (name, fd)) in h.fds.iter().enumerate() {
            assert_eq!(*fd, FIRST_FD + i as RawFd, "{vars:?}");
            assert!(*fd <= sockets_up_to, "{vars:?}");
            assert!(check_name(name).is_ok(), "{vars:?}");
        }
        if let Some(fd) = h.ready_fd {
            let after = FIRST_FD + h.fds.len() as RawFd;
            assert!(fd <= sockets_up_to && fd >= after, "{vars:?}");
        }
        assert!(h.generation >= 1);
        assert!(h.predecessor.is_none_or(|pid| pid > 0), "{vars:?}");
        if let Draining::Known(pids) = &h.draining {
            // Each one a pidfd in the heir: bounded, and real pids only.
            assert!(pids.len() <= GR_MAX_DRAINING as usize, "{vars:?}");
            assert!(pids.iter().all(|&pid| pid > 0), "{vars:?}");
        }
    }
}
