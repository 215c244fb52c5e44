//! The command line as a new user meets it: bare `walkeeper`, `help`, a missing or unknown option. Every usage
//! error is one error line plus the hint naming the subcommand's `--help`, with the exit code README.md
//! documents for that subcommand (receive, check, status, demo, service 1; verify 2; cleanup 2; restore 3).

mod support;

use support::{run_walkeeper, Run};

/// The documented usage-error exit code of each subcommand ("" is walkeeper itself).
const USAGE_CODES: [(&str, i32); 9] = [
    ("", 1),
    ("receive", 1),
    ("check", 1),
    ("demo", 1),
    ("service", 1),
    ("status", 1),
    ("verify", 2),
    ("cleanup", 2),
    ("restore", 3),
];

fn code_of(sub: &str) -> i32 {
    USAGE_CODES.iter().find(|(s, _)| *s == sub).map(|(_, c)| *c).unwrap()
}

/// stderr is exactly `walkeeper: error: {error}` and the hint for `sub`.
fn assert_usage_error(r: &Run, sub: &str, error: &str) {
    let help =
        if sub.is_empty() { "walkeeper --help".to_string() } else { format!("walkeeper {sub} --help") };
    assert_eq!(
        r.stderr,
        format!("walkeeper: error: {error}\nwalkeeper: hint: Try \"{help}\" for more information.\n"),
        "{sub}: {r}"
    );
    assert_eq!(r.code, Some(code_of(sub)), "{sub}: {r}");
    assert_eq!(r.stdout, "", "{sub}: {r}");
}

#[test]
fn unknown_options_point_to_the_subcommand_help_with_its_exit_code() {
    for (sub, _) in USAGE_CODES {
        let args: Vec<&str> = [sub, "--no-such-option"].into_iter().filter(|a| !a.is_empty()).collect();
        let r = run_walkeeper(&args);
        assert_usage_error(&r, sub, "unexpected argument '--no-such-option' found");
    }
}

#[test]
fn a_missing_required_option_is_named() {
    let cases: [(&[&str], &str, &str); 7] = [
        (&["service"], "service", "missing required argument: -c/--config FILE"),
        (&["verify"], "verify", "missing required argument: -D/--directory DIR"),
        (&["status"], "status", "missing required argument: -D/--directory DIR"),
        (&["status", "--json"], "status", "missing required argument: -D/--directory DIR"),
        (&["cleanup", "-D", "/nonexistent"], "cleanup", "missing required argument: OLDEST_KEPT"),
        (&["restore", "-D", "/nonexistent"], "restore", "missing required arguments: FILE, PATH"),
        (&["restore"], "restore", "missing required arguments: -D/--directory DIR, FILE, PATH"),
    ];
    for (args, sub, error) in cases {
        assert_usage_error(&run_walkeeper(args), sub, error);
    }
    // receive checks its own options, with pg_receivewal's words.
    assert_usage_error(&run_walkeeper(&["receive"]), "receive", "no target directory specified");
}

#[test]
fn bare_walkeeper_prints_the_usage_as_a_usage_error() {
    let r = run_walkeeper(&[]);
    assert_eq!(r.code, Some(code_of("")), "{r}");
    assert_eq!(r.stdout, "");
    assert!(r.stderr.contains("Usage: walkeeper [OPTIONS] <COMMAND>"), "{r}");
    for sub in ["receive", "check", "restore", "status", "cleanup", "verify", "service"] {
        assert!(r.stderr.lines().any(|l| l.trim_start().starts_with(sub)), "{sub} not listed: {r}");
    }
}

#[test]
fn help_for_a_subcommand_is_the_same_either_way() {
    for sub in ["receive", "check", "restore", "status", "cleanup", "verify", "demo", "service"] {
        let help = run_walkeeper(&["help", sub]);
        let flag = run_walkeeper(&[sub, "--help"]);
        assert_eq!(help.code, Some(0), "{help}");
        assert_eq!(flag.code, Some(0), "{flag}");
        assert_eq!(help.stdout, flag.stdout, "walkeeper help {sub} differs from walkeeper {sub} --help");
    }
    // receive keeps pg_receivewal's layout, with walkeeper's options listed.
    let receive = run_walkeeper(&["help", "receive"]).stdout;
    assert!(
        receive.starts_with("walkeeper receive receives PostgreSQL streaming write-ahead logs."),
        "{receive}"
    );
    assert!(receive.contains("--receive-timeout=SECS"), "{receive}");
}

#[test]
fn restore_help_shows_file_and_path_as_required() {
    let help = run_walkeeper(&["restore", "--help"]).stdout;
    assert!(help.contains("Usage: walkeeper restore [OPTIONS] --directory <DIR> <FILE> <PATH>"), "{help}");
    assert!(help.contains("  <FILE>  ") && help.contains("  <PATH>  "), "{help}");
}
